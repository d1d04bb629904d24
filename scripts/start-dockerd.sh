#!/usr/bin/env bash
# Start a Docker engine in the background unless one is already reachable, and wait for it.
# Used by CI and `nox -s e2e`; needs root and Debian's docker.io (dockerd, containerd).
# The compose tests also need busybox-static and docker-compose (v1) or the v2 plugin.
set -euo pipefail

log="${DOCKERD_LOG:-/tmp/dockerd.log}"
timeout="${DOCKERD_START_TIMEOUT:-60}"

if docker info >/dev/null 2>&1; then
    echo "start-dockerd: Docker engine already reachable"
    exit 0
fi
if ! command -v dockerd >/dev/null 2>&1; then
    echo "start-dockerd: dockerd not found; install it: apt-get install -y docker.io" >&2
    exit 1
fi
if [ "$(id -u)" -ne 0 ]; then
    echo "start-dockerd: dockerd must be started as root" >&2
    exit 1
fi

# setsid: the engine must outlive this script and not get the caller's signals.
setsid dockerd >"$log" 2>&1 < /dev/null &
for _ in $(seq "$timeout"); do
    if docker info >/dev/null 2>&1; then
        echo "start-dockerd: Docker engine up (pid $!, log $log)"
        exit 0
    fi
    sleep 1
done
echo "start-dockerd: dockerd did not come up within ${timeout}s; end of $log:" >&2
tail -n 30 "$log" >&2
exit 1
