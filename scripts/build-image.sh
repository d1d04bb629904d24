#!/usr/bin/env bash
# Build the wrktalk-agent image from this checkout, offline apart from the base image:
# the wheelhouse (scripts/build-wheelhouse.sh, cached), then `docker build`. Prints the
# image's size and the build time.
#
#   scripts/build-image.sh                                   # wrktalk-agent:dev
#   BASE_IMAGE="$(scripts/make-base-image.sh)" scripts/build-image.sh   # no registry
#   HELM_VERSION=3.16.3 HELM_SHA256=<sha256> [HELM_TARBALL=/path/helm-v3.16.3-linux-amd64.tar.gz] \
#       scripts/build-image.sh                               # the flavour with helm
#
# Settings (environment): TAG (default wrktalk-agent:dev), BASE_IMAGE (default
# debian:trixie-slim), HELM_VERSION, HELM_SHA256, HELM_TARBALL.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "build-image: $*" >&2
    exit 1
}

tag="${TAG:-wrktalk-agent:dev}"
base="${BASE_IMAGE:-debian:trixie-slim}"

docker info >/dev/null 2>&1 || die "no Docker engine reachable (start one: scripts/start-dockerd.sh)"

if ! docker image inspect "$base" >/dev/null 2>&1; then
    echo "build-image: $base is not on this engine; pulling it" >&2
    if ! docker pull "$base" >&2; then
        die "no base image: $base is not here and cannot be pulled (no registry?)." \
            "Make one from Debian's archive: BASE_IMAGE=\"\$(scripts/make-base-image.sh)\" $0"
    fi
fi

# The wheels must be for the base image's Python (Debian trixie: 3.13).
python_version="$(docker run --rm --entrypoint python3 "$base" \
    -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null || true)"
WHEELHOUSE_PYTHON="${python_version:-3.13}" scripts/build-wheelhouse.sh

rm -rf deploy/image/helm
mkdir -p deploy/image/helm
build_args=(--build-arg "BASE_IMAGE=$base")
if [ -n "${HELM_VERSION:-}" ]; then
    build_args+=(--build-arg "HELM_VERSION=$HELM_VERSION" --build-arg "HELM_SHA256=${HELM_SHA256:-}")
    if [ -n "${HELM_TARBALL:-}" ]; then
        [ -f "$HELM_TARBALL" ] || die "HELM_TARBALL=$HELM_TARBALL: no such file"
        cp "$HELM_TARBALL" deploy/image/helm/
    fi
fi

start=$(date +%s)
docker build "${build_args[@]}" -t "$tag" . >&2 || die "docker build failed (see above)"
seconds=$(($(date +%s) - start))
size="$(docker image inspect -f '{{ .Size }}' "$tag")"
echo "build-image: $tag built in ${seconds}s, $((size / 1000000)) MB" >&2
echo "$tag"
