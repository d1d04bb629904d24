# The wrktalk-agent image: the agent core with its five plugins, Debian's python3, docker
# CLI, Compose v2 and tini; helm only when asked for (see "Helm" below).
#
#   scripts/build-image.sh                     # wheelhouse + base check + this build
#
# or by hand, from the repository root:
#
#   scripts/build-wheelhouse.sh                # the Python side, into deploy/image/wheelhouse
#   docker build -t wrktalk-agent:dev .        # on debian:trixie-slim, from a registry
#   docker build --build-arg BASE_IMAGE="$(scripts/make-base-image.sh)" -t wrktalk-agent:dev .
#                                              # no registry: a base made with mmdebstrap
#
# Nothing is installed from a package index during the build: Python packages come from
# the wheelhouse in the build context; Debian packages from Debian's signed archive (none
# at all on the mmdebstrap base, which already has them). The build works with the
# classic builder and with BuildKit.
#
# Helm (the Kubernetes flavour) is a pinned download verified against a sha256 you pass:
#
#   --build-arg HELM_VERSION=3.16.3 --build-arg HELM_SHA256=<helm-v3.16.3-linux-amd64.tar.gz.sha256sum>
#
# The tarball is taken from deploy/image/helm/ when it is there (air-gapped builds),
# otherwise from https://get.helm.sh. Without HELM_VERSION the image has no helm.

ARG BASE_IMAGE=debian:trixie-slim

# --- 1. runtime: Debian packages, the user ----------------------------------------------
FROM ${BASE_IMAGE} AS runtime
COPY deploy/image/packages /usr/local/share/wrktalk-agent/packages
SHELL ["/bin/sh", "-eu", "-c"]
RUN missing=""; \
    for package in $(grep -v '^#' /usr/local/share/wrktalk-agent/packages); do \
        dpkg-query -W -f '${Status}\n' "$package" 2>/dev/null | grep -q 'ok installed' \
            || missing="$missing $package"; \
    done; \
    if [ -n "$missing" ]; then \
        apt-get update; \
        DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $missing; \
        rm -rf /var/lib/apt/lists/*; \
    fi; \
    docker compose version; \
    groupadd --system --gid 10001 wrktalk; \
    useradd --system --uid 10001 --gid 10001 --home-dir /home/wrktalk --create-home wrktalk; \
    install -d -o 10001 -g 10001 -m 0700 /var/lib/wrktalk-agent /var/lib/wrktalk-agent/work; \
    install -d -o 10001 -g 10001 -m 0755 /var/run/wrktalk

# --- 2. the Python side, from the wheelhouse ---------------------------------------------
FROM runtime AS python
COPY deploy/image/ /build/
RUN if [ ! -f /build/wheelhouse/python-version ]; then \
        echo "no wheelhouse in deploy/image/wheelhouse: run scripts/build-wheelhouse.sh first" >&2; \
        exit 1; \
    fi; \
    want="$(cat /build/wheelhouse/python-version)"; \
    have="$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')"; \
    if [ "$want" != "$have" ]; then \
        echo "the wheelhouse is for Python $want, the base image has Python $have:" \
             "run WHEELHOUSE_PYTHON=$have scripts/build-wheelhouse.sh" >&2; \
        exit 1; \
    fi; \
    python3 -m venv --without-pip /opt/wrktalk-agent; \
    set -- /build/wheelhouse/pip-*.whl; \
    /opt/wrktalk-agent/bin/python "$1/pip" install --quiet --no-cache-dir --no-index \
        --disable-pip-version-check --find-links /build/wheelhouse \
        "wrktalk-agent[tui]" wrktalk-agent-helm wrktalk-agent-compose \
        wrktalk-agent-nginx wrktalk-agent-haproxy wrktalk-agent-smtp; \
    /opt/wrktalk-agent/bin/wrktalk-agent plugins

# --- 3. helm, when asked for --------------------------------------------------------------
FROM runtime AS helm
ARG HELM_VERSION=
ARG HELM_SHA256=
COPY deploy/image/ /build/
RUN mkdir -p /out; \
    if [ -z "${HELM_VERSION}" ]; then exit 0; fi; \
    debian_arch="$(dpkg --print-architecture)"; \
    case "$debian_arch" in \
        amd64|arm64) ;; \
        *) echo "helm: unsupported architecture $debian_arch (amd64 or arm64)" >&2; exit 1 ;; \
    esac; \
    tarball="helm-v${HELM_VERSION}-linux-${debian_arch}.tar.gz"; \
    if ! echo "${HELM_SHA256}" | grep -Eq '^[0-9a-f]{64}$'; then \
        echo "HELM_VERSION=${HELM_VERSION} needs --build-arg HELM_SHA256=<sha256 of $tarball>" \
             "(published beside it as $tarball.sha256sum)" >&2; \
        exit 1; \
    fi; \
    if [ -f "/build/helm/$tarball" ]; then \
        cp "/build/helm/$tarball" /tmp/; \
    else \
        python3 -c 'import sys, urllib.request; urllib.request.urlretrieve(sys.argv[1], sys.argv[2])' \
            "https://get.helm.sh/$tarball" "/tmp/$tarball" \
            || { echo "helm: cannot download https://get.helm.sh/$tarball; put it in deploy/image/helm/" >&2; exit 1; }; \
    fi; \
    if ! echo "${HELM_SHA256}  /tmp/$tarball" | sha256sum -c - >/dev/null 2>&1; then \
        echo "$tarball does not match --build-arg HELM_SHA256=${HELM_SHA256}" >&2; \
        exit 1; \
    fi; \
    tar -xzf "/tmp/$tarball" -C /out --strip-components=1 "linux-$debian_arch/helm"; \
    /out/helm version --short

# --- 4. the image --------------------------------------------------------------------------
FROM runtime
COPY --from=python /opt/wrktalk-agent /opt/wrktalk-agent
COPY --from=helm /out/ /usr/local/bin/
COPY deploy/docker-entrypoint.sh /usr/local/bin/docker-entrypoint.sh
RUN chmod 0755 /usr/local/bin/docker-entrypoint.sh

# helm and docker write caches and config below /tmp: with a read-only root file system,
# /tmp and the work dir are the writable volumes (emptyDirs in deploy/k8s).
ENV PATH=/opt/wrktalk-agent/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    PYTHONUNBUFFERED=1 \
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
# WRKTALK_AGENT_HTTP_PORT.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python3", "-c", "import os, urllib.request; urllib.request.urlopen('http://127.0.0.1:%s/healthz' % os.environ.get('WRKTALK_AGENT_HTTP_PORT', '8080'), timeout=4)"]

# tini as PID 1: forwards SIGTERM to the agent and reaps what helm or docker leave behind.
ENTRYPOINT ["tini", "--", "/usr/local/bin/docker-entrypoint.sh"]
CMD ["wrktalk-agent", "run"]
