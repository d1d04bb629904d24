#!/usr/bin/env bash
# Make the image's Debian base without a registry: mmdebstrap builds a Debian trixie root
# file system from the Debian archive apt uses (signatures checked), with the runtime
# packages of deploy/image/packages already in it, and `docker import` turns it into an
# image. Prints the image's name:
#
#   docker build --build-arg BASE_IMAGE="$(scripts/make-base-image.sh)" ...
#
# Cached: the image is reused while it carries the same package list; the tarball is kept
# in ~/.cache/wrktalk-agent, so after `docker image prune` only the import is repeated.
# Remove the tarball (or set REFRESH=1) to take newer Debian packages.
#
# Settings (environment): BASE_TAG (default wrktalk-agent-base:trixie), PACKAGES (the
# package list, default deploy/image/packages; deploy/compose/nginx/packages for nginx), DEBIAN_SUITE
# (default trixie), DEBIAN_MIRROR (default deb.debian.org), REFRESH=1.
# Needs root (or working user namespaces) for mmdebstrap, and a Docker engine.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "make-base-image: $*" >&2
    exit 1
}

tag="${BASE_TAG:-wrktalk-agent-base:trixie}"
suite="${DEBIAN_SUITE:-trixie}"
cache="${XDG_CACHE_HOME:-$HOME/.cache}/wrktalk-agent"
packages_file="${PACKAGES:-deploy/image/packages}"
[ -f "$packages_file" ] || die "PACKAGES=$packages_file: no such file"
packages="$(grep -v '^#' "$packages_file" | xargs)"
[ -n "$packages" ] || die "$packages_file lists no package"
# what the image is made of: the suite and the package list
key="$(printf '%s\n' "$suite" "$packages" | sha256sum | cut -c1-16)"
tarball="$cache/base-$suite-$key.tar"

command -v docker >/dev/null 2>&1 || die "the docker CLI is not installed (apt-get install docker.io)"
docker info >/dev/null 2>&1 || die "no Docker engine reachable (start one: scripts/start-dockerd.sh)"

if [ "${REFRESH:-0}" != "1" ] &&
    [ "$(docker image inspect -f '{{ index .Config.Labels "org.wrktalk.base-key" }}' "$tag" 2>/dev/null)" = "$key" ]; then
    echo "$tag"
    exit 0
fi

if [ "${REFRESH:-0}" = "1" ] || [ ! -s "$tarball" ]; then
    command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap not found: apt-get install mmdebstrap"
    mkdir -p "$cache"
    mirror=()
    if [ -n "${DEBIAN_MIRROR:-}" ]; then
        mirror=("$DEBIAN_MIRROR")
    fi
    # mmdebstrap picks the output format from the name: keep .tar at the end
    partial="$cache/partial-$$.tar"
    echo "make-base-image: mmdebstrap $suite with: $packages" >&2
    # minbase: apt and the required packages (like debian:*-slim); no docs, man pages or
    # translations; no Recommends.
    if ! mmdebstrap --quiet --variant=minbase --include="${packages// /,}" \
        --aptopt='APT::Install-Recommends "false"' \
        --dpkgopt='path-exclude=/usr/share/doc/*' \
        --dpkgopt='path-include=/usr/share/doc/*/copyright' \
        --dpkgopt='path-exclude=/usr/share/man/*' \
        --dpkgopt='path-exclude=/usr/share/locale/*' \
        "$suite" "$partial" "${mirror[@]}" >&2; then
        rm -rf "$partial"
        die "mmdebstrap failed (see its lines above); it needs root and the Debian archive" \
            "(deb.debian.org, or DEBIAN_MIRROR=<url>)"
    fi
    mv -f "$partial" "$tarball"
fi

echo "make-base-image: docker import $tarball as $tag" >&2
docker import \
    --change "LABEL org.wrktalk.base-key=$key" \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'CMD ["bash"]' \
    "$tarball" "$tag" >/dev/null
echo "$tag"
