# syntax=docker/dockerfile:1
#
# One image for Kubernetes (helm) and Docker hosts (docker compose): the agent core with
# its five plugins, helm, and the docker CLI with the compose v2 plugin.
#
#   docker build \
#     --build-arg DOCKER_SHA256_AMD64=<sha256 of docker-${DOCKER_VERSION}.tgz> \
#     --build-arg COMPOSE_SHA256_AMD64=<from docker-compose-linux-x86_64.sha256> \
#     -t wrktalk-agent:0.1.0 .
#
# Every downloaded binary is pinned by version and checked against a sha256 given here;
# the build stops when a checksum is missing or does not match. See docs/operator.md
# ("Building the image") for where each checksum is published.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- 1. wheels: the six distributions and all their dependencies ------------------------
FROM ${PYTHON_IMAGE} AS wheels
WORKDIR /src
COPY pyproject.toml README.md ./
COPY wrktalk_agent ./wrktalk_agent
COPY plugins ./plugins
# Dependencies become wheels here too, so the final stage installs offline (--no-index)
# and needs no compiler.
RUN pip wheel --no-cache-dir --wheel-dir /wheels \
        ".[tui]" ./plugins/helm ./plugins/compose ./plugins/nginx ./plugins/haproxy ./plugins/smtp

# --- 2. tools: helm, docker CLI, compose plugin; each verified ---------------------------
FROM ${PYTHON_IMAGE} AS tools
ARG TARGETARCH=amd64
# Helm publishes helm-vX.Y.Z-linux-ARCH.tar.gz.sha256sum next to each tarball (get.helm.sh).
# The values below are those for v3.16.3; cross-checked against several independent public
# projects that pin the same release, not re-downloaded while writing this file.
ARG HELM_VERSION=3.16.3
ARG HELM_SHA256_AMD64=f5355c79190951eed23c5432a3b920e071f4c00a64f75e077de0dd4cb7b294ea
ARG HELM_SHA256_ARM64=5bd34ed774df6914b323ff84a0a156ea6ff2ba1eaf0113962fa773f3f9def798
# Docker publishes no checksum file for its static CLI tarballs: compute the sha256 of
# download.docker.com/linux/static/stable/<x86_64|aarch64>/docker-${DOCKER_VERSION}.tgz
# once, from a trusted network, and pass it here.
ARG DOCKER_VERSION=27.3.1
ARG DOCKER_SHA256_AMD64=
ARG DOCKER_SHA256_ARM64=
# Compose publishes docker-compose-linux-<x86_64|aarch64>.sha256 with each GitHub release.
ARG COMPOSE_VERSION=2.32.1
ARG COMPOSE_SHA256_AMD64=
ARG COMPOSE_SHA256_ARM64=

RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*

SHELL ["/bin/sh", "-eu", "-c"]
RUN case "${TARGETARCH}" in \
        amd64) arch=x86_64; helm_sha="${HELM_SHA256_AMD64}"; docker_sha="${DOCKER_SHA256_AMD64}"; compose_sha="${COMPOSE_SHA256_AMD64}" ;; \
        arm64) arch=aarch64; helm_sha="${HELM_SHA256_ARM64}"; docker_sha="${DOCKER_SHA256_ARM64}"; compose_sha="${COMPOSE_SHA256_ARM64}" ;; \
        *) echo "unsupported TARGETARCH ${TARGETARCH} (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    upper=$(echo "${TARGETARCH}" | tr a-z A-Z); \
    for pair in "HELM:${helm_sha}" "DOCKER:${docker_sha}" "COMPOSE:${compose_sha}"; do \
        if [ -z "${pair#*:}" ]; then \
            echo "missing --build-arg ${pair%%:*}_SHA256_${upper}: every download is verified (see the comments in the Dockerfile)" >&2; \
            exit 1; \
        fi; \
    done; \
    mkdir -p /out /tmp/dl && cd /tmp/dl; \
    curl -fsSLo helm.tgz "https://get.helm.sh/helm-v${HELM_VERSION}-linux-${TARGETARCH}.tar.gz"; \
    curl -fsSLo docker.tgz "https://download.docker.com/linux/static/stable/${arch}/docker-${DOCKER_VERSION}.tgz"; \
    curl -fsSLo docker-compose "https://github.com/docker/compose/releases/download/v${COMPOSE_VERSION}/docker-compose-linux-${arch}"; \
    printf '%s  %s\n' "${helm_sha}" helm.tgz "${docker_sha}" docker.tgz "${compose_sha}" docker-compose \
        | sha256sum -c -; \
    tar -xzf helm.tgz --strip-components=1 -C /out "linux-${TARGETARCH}/helm"; \
    tar -xzf docker.tgz --strip-components=1 -C /out docker/docker; \
    install -m 0755 docker-compose /out/docker-compose; \
    rm -rf /tmp/dl

# --- 3. the image ------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}

# tini as PID 1: forwards SIGTERM to the agent and reaps what helm or docker leave behind.
RUN apt-get update \
    && apt-get install -y --no-install-recommends tini \
    && rm -rf /var/lib/apt/lists/*

RUN --mount=type=bind,from=wheels,source=/wheels,target=/wheels \
    pip install --no-cache-dir --no-index --find-links /wheels \
        "wrktalk-agent[tui]" wrktalk-agent-helm wrktalk-agent-compose \
        wrktalk-agent-nginx wrktalk-agent-haproxy wrktalk-agent-smtp

COPY --from=tools /out/helm /out/docker /usr/local/bin/
COPY --from=tools /out/docker-compose /usr/local/lib/docker/cli-plugins/docker-compose
COPY --chmod=0755 deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh

# A fixed numeric uid/gid so that Kubernetes' runAsNonRoot can verify it and volume
# ownership (fsGroup) is predictable.
RUN groupadd --system --gid 10001 wrktalk \
    && useradd --system --uid 10001 --gid 10001 --home-dir /home/wrktalk --create-home wrktalk \
    && install -d -o 10001 -g 10001 -m 0700 /var/lib/wrktalk-agent /var/lib/wrktalk-agent/work \
    && install -d -o 10001 -g 10001 -m 0755 /var/run/wrktalk

# helm and docker write caches and config below these; with a read-only root file
# system, /tmp is the writable volume (an emptyDir in deploy/k8s).
ENV PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    WRKTALK_AGENT_HTTP_PORT=8080 \
    WRKTALK_AGENT_WORK_DIR=/var/lib/wrktalk-agent/work \
    WRKTALK_AGENT_LOG_FORMAT=json \
    HELM_CACHE_HOME=/tmp/helm/cache \
    HELM_CONFIG_HOME=/tmp/helm/config \
    HELM_DATA_HOME=/tmp/helm/data \
    DOCKER_CONFIG=/tmp/docker

USER 10001:10001
WORKDIR /home/wrktalk
EXPOSE 8080

# /healthz answers 503 when the agent's main loop stopped ticking; the port follows
# WRKTALK_AGENT_HTTP_PORT (python is there anyway; curl is not).
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WRKTALK_AGENT_HTTP_PORT', '8080'), timeout=4)"]

ENTRYPOINT ["tini", "--", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["wrktalk-agent", "run"]
