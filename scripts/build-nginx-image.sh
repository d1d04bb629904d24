#!/usr/bin/env bash
# Build the nginx image of deploy/compose (Debian's nginx plus the nginx plugin's
# maintenance snippets, taken from the agent image). Prints the image's name.
#
#   scripts/build-nginx-image.sh                      # wrktalk-agent-nginx:dev
#   BASE_IMAGE="$(PACKAGES=deploy/compose/nginx/packages BASE_TAG=wrktalk-nginx-base:trixie \
#       scripts/make-base-image.sh)" scripts/build-nginx-image.sh     # no registry
#
# Settings (environment): TAG (default wrktalk-agent-nginx:dev), AGENT_IMAGE (default
# wrktalk-agent:dev, from scripts/build-image.sh), BASE_IMAGE (default debian:trixie-slim).
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "build-nginx-image: $*" >&2
    exit 1
}

tag="${TAG:-wrktalk-agent-nginx:dev}"
agent="${AGENT_IMAGE:-wrktalk-agent:dev}"
base="${BASE_IMAGE:-debian:trixie-slim}"

docker info >/dev/null 2>&1 || die "no Docker engine reachable (start one: scripts/start-dockerd.sh)"
docker image inspect "$agent" >/dev/null 2>&1 ||
    die "no agent image $agent: build it first (scripts/build-image.sh)"
if ! docker image inspect "$base" >/dev/null 2>&1 && ! docker pull "$base" >&2; then
    die "no base image: $base is not here and cannot be pulled (no registry?). Make one:" \
        "BASE_IMAGE=\"\$(PACKAGES=deploy/compose/nginx/packages BASE_TAG=wrktalk-nginx-base:trixie" \
        "scripts/make-base-image.sh)\" $0"
fi
docker build --build-arg "AGENT_IMAGE=$agent" --build-arg "BASE_IMAGE=$base" \
    -t "$tag" deploy/compose/nginx >&2 || die "docker build failed (see above)"
echo "$tag"
