#!/usr/bin/env bash
# A local Kubernetes for Berth's kubernetes sandbox backend, with kind. Idempotent: run it again to
# rebuild and roll out the image; every step skips what is already there.
#
#   bin/kind-up.sh                  # cluster "berth", agent-sandbox pinned below, Postgres, Berth
#   KIND_CLUSTER=dev bin/kind-up.sh
#
# Needs: docker, kind (0.24+: its default CNI enforces NetworkPolicy), kubectl. Afterwards:
#   kubectl -n berth port-forward svc/berth 3000:80     # http://localhost:3000
#   kubectl -n berth get secret berth -o jsonpath='{.data.BERTH_ADMIN_API_KEY}' | base64 -d
#
# The Postgres it starts is a single in-cluster pod for trying things out, not for production:
# point DATABASE_URL in the "berth" Secret at a managed Postgres instead (docs/kubernetes.md).
set -euo pipefail
cd "$(dirname "$0")/.."

CLUSTER="${KIND_CLUSTER:-berth}"
NAMESPACE=berth
# Pinned: the CRDs vendored in k8s/crds/ are this release's (v1beta1 storage).
AGENT_SANDBOX_VERSION="${AGENT_SANDBOX_VERSION:-v0.5.6}"
AGENT_SANDBOX_MANIFEST="https://github.com/kubernetes-sigs/agent-sandbox/releases/download/${AGENT_SANDBOX_VERSION}/sandbox-with-extensions.yaml"
IMAGE="${BERTH_IMAGE:-berth:dev}"

say() { printf '\n==> %s\n' "$*"; }
need() { command -v "$1" >/dev/null 2>&1 || { echo "kind-up: $1 is required ($2)" >&2; exit 1; }; }
need docker "https://docs.docker.com/engine/install/"
need kind "https://kind.sigs.k8s.io/docs/user/quick-start/#installation"
need kubectl "https://kubernetes.io/docs/tasks/tools/"

if kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  say "kind cluster $CLUSTER exists"
else
  say "creating kind cluster $CLUSTER"
  kind create cluster --name "$CLUSTER" --wait 120s
fi
kubectl config use-context "kind-$CLUSTER" >/dev/null
KUBECTL=(kubectl --context "kind-$CLUSTER")

say "agent-sandbox controller and CRDs $AGENT_SANDBOX_VERSION"
"${KUBECTL[@]}" apply --server-side --force-conflicts -f "$AGENT_SANDBOX_MANIFEST"
"${KUBECTL[@]}" wait --for=condition=Established --timeout=120s \
  crd/sandboxes.agents.x-k8s.io crd/sandboxtemplates.extensions.agents.x-k8s.io
"${KUBECTL[@]}" -n agent-sandbox-system rollout status deployment --timeout=180s

say "building $IMAGE and loading it into the cluster"
docker build -t "$IMAGE" .
kind load docker-image "$IMAGE" --name "$CLUSTER"

say "namespace, ServiceAccount, Role, NetworkPolicies"
"${KUBECTL[@]}" apply -f k8s/manifests/namespace.yaml
"${KUBECTL[@]}" apply -f k8s/manifests/serviceaccount.yaml -f k8s/manifests/rbac.yaml -f k8s/manifests/networkpolicies.yaml -f k8s/manifests/service.yaml

say "Postgres (try-out only)"
"${KUBECTL[@]}" -n "$NAMESPACE" apply -f - <<'YAML'
apiVersion: apps/v1
kind: StatefulSet
metadata: { name: postgres, namespace: berth, labels: { app.kubernetes.io/name: postgres } }
spec:
  serviceName: postgres
  replicas: 1
  selector: { matchLabels: { app.kubernetes.io/name: postgres } }
  template:
    metadata: { labels: { app.kubernetes.io/name: postgres } }
    spec:
      securityContext: { runAsNonRoot: true, runAsUser: 999, runAsGroup: 999, fsGroup: 999, seccompProfile: { type: RuntimeDefault } }
      containers:
        - name: postgres
          image: postgres:17-bookworm
          env:
            - { name: POSTGRES_USER, value: berth }
            - { name: POSTGRES_PASSWORD, value: berth }
            - { name: POSTGRES_DB, value: berth }
            - { name: PGDATA, value: /var/lib/postgresql/data/pgdata }
          ports: [{ containerPort: 5432 }]
          securityContext: { allowPrivilegeEscalation: false, capabilities: { drop: ["ALL"] } }
          volumeMounts: [{ name: data, mountPath: /var/lib/postgresql/data }, { name: run, mountPath: /var/run/postgresql }]
      volumes: [{ name: run, emptyDir: {} }]
  volumeClaimTemplates:
    - metadata: { name: data }
      spec: { accessModes: ["ReadWriteOnce"], resources: { requests: { storage: 2Gi } } }
---
apiVersion: v1
kind: Service
metadata: { name: postgres, namespace: berth }
spec:
  selector: { app.kubernetes.io/name: postgres }
  ports: [{ port: 5432 }]
YAML
"${KUBECTL[@]}" -n "$NAMESPACE" rollout status statefulset/postgres --timeout=180s

if "${KUBECTL[@]}" -n "$NAMESPACE" get secret berth >/dev/null 2>&1; then
  say "Secret berth exists (kept: its BERTH_SECRET_KEY encrypts the stored secrets)"
else
  say "creating Secret berth (database URL, secret key, admin API key)"
  "${KUBECTL[@]}" -n "$NAMESPACE" create secret generic berth \
    --from-literal=DATABASE_URL="postgres://berth:berth@postgres.${NAMESPACE}.svc:5432/berth" \
    --from-literal=BERTH_SECRET_KEY="$(openssl rand -hex 32)" \
    --from-literal=BERTH_ADMIN_API_KEY="$(openssl rand -hex 24)"
fi

say "Berth (2 replicas, image $IMAGE)"
sed -e "s|image: berth:latest|image: ${IMAGE}|" -e "s|value: berth:latest|value: ${IMAGE}|" k8s/manifests/deployment.yaml \
  | "${KUBECTL[@]}" apply -f -
# Same tag, new build: make the pods pick it up.
"${KUBECTL[@]}" -n "$NAMESPACE" rollout restart deployment/berth
"${KUBECTL[@]}" -n "$NAMESPACE" rollout status deployment/berth --timeout=300s

say "ready"
echo "  kubectl -n $NAMESPACE port-forward svc/berth 3000:80"
echo "  admin API key: kubectl -n $NAMESPACE get secret berth -o jsonpath='{.data.BERTH_ADMIN_API_KEY}' | base64 -d"
