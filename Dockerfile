# syntax=docker/dockerfile:1
#
# tender container image.
#
#   docker build -t tender:0.1.0 .                           the runtime image (the last stage)
#   docker build --target bench -t tender-bench:0.1.0 .      runtime + bench/ (docker-compose.yml, profile "bench")
#   docker run --rm tender:0.1.0 snapshots --help
#
# The image runs as a non-root user by default. The node agent DaemonSet (deploy/daemonset.yaml)
# runs it as root (uid 0) with only CAP_DAC_READ_SEARCH, so that it can read the pod volumes it
# backs up through the read-only hostPath mount of /var/lib/kubelet/pods; its securityContext
# sets that, not this file.

# ---------------------------------------------------------------- build
FROM node:20-bookworm AS build

# Toolchain for the native addons: tender's own native/ (built by the "install" script of
# package.json) and zstd-napi (a prebuilt binary when one matches, else node-gyp). The full
# bookworm image already carries them; listing them keeps the build honest if the base changes.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 make g++ \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app

# npm ci runs tender's own lifecycle scripts ("install": node-gyp for native/, "prepare": tsc),
# so the sources they need are copied first.
COPY package.json package-lock.json tsconfig.json ./
COPY native/binding.gyp native/binding.gyp
COPY native/src native/src
COPY src src
COPY bin bin

# The image's own npm (10.x) is used on purpose: it accepts the lockfile as committed.
RUN npm ci --no-audit --no-fund
RUN npm run build
RUN npm prune --omit=dev --no-audit --no-fund

# ---------------------------------------------------------------- runtime
FROM node:20-bookworm-slim AS runtime

LABEL org.opencontainers.image.title="tender" \
      org.opencontainers.image.description="Backup data mover for Kubernetes nodes that run AI training: deduplicating, compressed, encrypted backups of node volumes to S3/MinIO or a local directory" \
      org.opencontainers.image.version="0.1.0" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.base.name="docker.io/library/node:20-bookworm-slim"

ENV NODE_ENV=production

WORKDIR /app
COPY --from=build /app/package.json ./package.json
COPY --from=build /app/node_modules ./node_modules
COPY --from=build /app/dist ./dist
COPY --from=build /app/bin ./bin
# Loaded from <package root>/native/build/Release/tender_native.node (src/backup/chunk/native.ts).
COPY --from=build /app/native/build/Release/tender_native.node ./native/build/Release/tender_native.node
# The freeze guard of `backup --fsfreeze` / tender.io/fsfreeze (native/src/freeze_guard.cc).
COPY --from=build /app/native/build/Release/tender-freeze-guard ./native/build/Release/tender-freeze-guard

# `tender` on PATH, for scripts (docker-compose.yml runs `sh -c 'tender ...'`).
RUN ln -s /app/bin/tender.js /usr/local/bin/tender

# Non-root by default: the image's `node` user (uid/gid 1000). Numeric, so that Kubernetes'
# runAsNonRoot can verify it. The agent DaemonSet overrides this with runAsUser: 0 (see the
# header of this file).
USER 1000:1000

ENTRYPOINT ["node", "/app/bin/tender.js"]
# The node agent subcommand does not exist yet; when it does, it replaces this default
# (e.g. CMD ["agent"]). Until then the image prints the CLI help when run without arguments.
CMD ["--help"]

# ---------------------------------------------------------------- bench
# The benchmark (bench/run.mjs) on top of the runtime image. Only tender is in the image (no
# restic, no kopia, no Go to build a private MinIO): run it with `--tools tender --backend local`.
FROM runtime AS bench

USER root
# GNU time gives bench/tools.mjs the peak RSS of each command (it falls back to sampling /proc).
RUN apt-get update \
    && apt-get install -y --no-install-recommends time \
    && rm -rf /var/lib/apt/lists/*
COPY bench bench
# Results go to bench/results; generated data to --data-dir (volumes in docker-compose.yml).
RUN mkdir -p /app/bench/results /bench-data \
    && chown 1000:1000 /app/bench/results /bench-data
USER 1000:1000

ENTRYPOINT ["node", "/app/bench/run.mjs"]
CMD ["--tools", "tender", "--backend", "local", "--scale", "0.25", "--versions", "2", "--data-dir", "/bench-data"]

# ---------------------------------------------------------------- default target
# Last, so that a plain `docker build .` produces the runtime image and not the bench one.
FROM runtime AS release
