#!/usr/bin/env bash
# Berth's kubernetes sandbox backend on Amazon EKS. Idempotent where the tools allow: existing
# pieces are kept. Read docs/kubernetes.md first; this script is a worked starting point, not a
# production platform (it does not create a managed Postgres: bring DATABASE_URL from RDS/Aurora).
#
#   AWS_REGION=eu-west-1 DATABASE_URL=postgres://... bin/eks-up.sh
#
# Needs: aws (v2, credentials allowed to create EKS clusters, IAM roles and ECR repositories),
# eksctl, kubectl, docker, openssl.
#
# IAM, in short:
#   - Berth itself needs no AWS permissions: it talks only to the Kubernetes API, through the
#     ServiceAccount "berth" and the namespaced Role in k8s/manifests/rbac.yaml.
#   - The EBS CSI driver (workspace PersistentVolumeClaims) needs AmazonEBSCSIDriverPolicy: eksctl
#     creates that role (IRSA) below.
#   - Nodes pull the image from ECR: the node role's AmazonEC2ContainerRegistryReadOnly (eksctl's
#     default for managed node groups).
#   - Sandbox pods get no ServiceAccount token and, with the NetworkPolicies, cannot reach the
#     instance metadata service (169.254.169.254): they cannot borrow the node's IAM role. Keep IMDSv2
#     with a hop limit of 1 on the nodes as a second line (set below).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${EKS_CLUSTER:-berth}"
REGION="${AWS_REGION:?set AWS_REGION}"
K8S_VERSION="${EKS_VERSION:-1.33}"
NODE_TYPE="${EKS_NODE_TYPE:-m7i.large}"
NAMESPACE=berth
AGENT_SANDBOX_VERSION="${AGENT_SANDBOX_VERSION:-v0.5.6}"
AGENT_SANDBOX_MANIFEST="https://github.com/kubernetes-sigs/agent-sandbox/releases/download/${AGENT_SANDBOX_VERSION}/sandbox-with-extensions.yaml"

say() { printf '\n==> %s\n' "$*"; }
for tool in aws eksctl kubectl docker openssl; do command -v "$tool" >/dev/null || { echo "eks-up: $tool is required" >&2; exit 1; }; done
ACCOUNT=$(aws sts get-caller-identity --query Account --output text)
REPOSITORY="${ACCOUNT}.dkr.ecr.${REGION}.amazonaws.com/berth"
TAG="${BERTH_TAG:-$(git rev-parse --short HEAD)}"

if eksctl get cluster --name "$CLUSTER" --region "$REGION" >/dev/null 2>&1; then
  say "EKS cluster $CLUSTER exists"
else
  say "creating EKS cluster $CLUSTER ($K8S_VERSION, $NODE_TYPE) - this takes ~20 minutes"
  eksctl create cluster -f - <<YAML
apiVersion: eksctl.io/v1alpha5
kind: ClusterConfig
metadata: { name: ${CLUSTER}, region: ${REGION}, version: "${K8S_VERSION}" }
iam: { withOIDC: true }
addons:
  - name: vpc-cni
    # The VPC CNI enforces NetworkPolicy only with this on.
    configurationValues: '{"enableNetworkPolicy": "true"}'
  - name: coredns
  - name: kube-proxy
  - name: aws-ebs-csi-driver
    wellKnownPolicies: { ebsCSIController: true }
managedNodeGroups:
  - name: sandboxes
    instanceType: ${NODE_TYPE}
    minSize: 2
    desiredCapacity: 2
    maxSize: 10
    disableIMDSv1: true
    # Hop limit 1: pods cannot reach the instance metadata service through the node.
    instanceMetadataOptions: { httpPutResponseHopLimit: 1 }
YAML
fi
aws eks update-kubeconfig --name "$CLUSTER" --region "$REGION" >/dev/null

say "gp3 StorageClass for workspaces (default)"
kubectl apply -f - <<'YAML'
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: gp3
  annotations: { storageclass.kubernetes.io/is-default-class: "true" }
provisioner: ebs.csi.aws.com
volumeBindingMode: WaitForFirstConsumer
allowVolumeExpansion: true
parameters: { type: gp3, encrypted: "true" }
YAML

say "agent-sandbox controller and CRDs $AGENT_SANDBOX_VERSION"
kubectl apply --server-side --force-conflicts -f "$AGENT_SANDBOX_MANIFEST"
kubectl wait --for=condition=Established --timeout=120s crd/sandboxes.agents.x-k8s.io crd/sandboxtemplates.extensions.agents.x-k8s.io
kubectl -n agent-sandbox-system rollout status deployment --timeout=300s

say "image ${REPOSITORY}:${TAG}"
aws ecr describe-repositories --repository-names berth --region "$REGION" >/dev/null 2>&1 \
  || aws ecr create-repository --repository-name berth --image-scanning-configuration scanOnPush=true --region "$REGION" >/dev/null
aws ecr get-login-password --region "$REGION" | docker login --username AWS --password-stdin "${ACCOUNT}.dkr.ecr.${REGION}.amazonaws.com"
docker build --platform linux/amd64 -t "${REPOSITORY}:${TAG}" .
docker push "${REPOSITORY}:${TAG}"

say "namespace, ServiceAccount, Role, NetworkPolicies, Service"
kubectl apply -f k8s/manifests/namespace.yaml
kubectl apply -f k8s/manifests/serviceaccount.yaml -f k8s/manifests/rbac.yaml -f k8s/manifests/networkpolicies.yaml -f k8s/manifests/service.yaml

if kubectl -n "$NAMESPACE" get secret berth >/dev/null 2>&1; then
  say "Secret berth exists (kept)"
else
  : "${DATABASE_URL:?set DATABASE_URL (RDS / Aurora Postgres) for the first run}"
  say "creating Secret berth"
  kubectl -n "$NAMESPACE" create secret generic berth \
    --from-literal=DATABASE_URL="$DATABASE_URL" \
    --from-literal=BERTH_SECRET_KEY="$(openssl rand -hex 32)" \
    --from-literal=BERTH_ADMIN_API_KEY="$(openssl rand -hex 24)"
fi

say "Berth ${TAG}"
sed -e "s|image: berth:latest|image: ${REPOSITORY}:${TAG}|" -e "s|value: berth:latest|value: ${REPOSITORY}:${TAG}|" k8s/manifests/deployment.yaml | kubectl apply -f -
kubectl -n "$NAMESPACE" rollout status deployment/berth --timeout=600s
say "ready: expose svc/berth with your ingress (AWS Load Balancer Controller) or: kubectl -n $NAMESPACE port-forward svc/berth 3000:80"
