#!/usr/bin/env bash
# Install Docker Compose v2 as a docker CLI plugin for this user, without touching the
# host's apt sources, and print the DOCKER_CONFIG directory that holds it:
#
#   export DOCKER_CONFIG="$(scripts/install-compose-v2.sh)"
#   docker compose version
#
# The binary is Debian trixie's `docker-compose` package (Compose 2.26, a static docker CLI
# plugin), fetched and signature-checked by mmdebstrap from the same Debian archive apt
# uses; only `usr/libexec/docker/cli-plugins/docker-compose` is kept. It runs on bookworm
# hosts too. Installed once and reused: a second run only prints the directory.
#
# Settings (environment):
#   WRKTALK_DOCKER_CONFIG  where to install (default ~/.cache/wrktalk-agent/docker-config);
#                          the plugin lands in $WRKTALK_DOCKER_CONFIG/cli-plugins/
#   DEBIAN_SUITE           suite to take the package from (default trixie)
#   DEBIAN_MIRROR          archive URL (default: mmdebstrap's, deb.debian.org)
#
# Only the directory goes to stdout; progress and errors go to stderr.
set -euo pipefail

die() {
    echo "install-compose-v2: $*" >&2
    exit 1
}

dest="${WRKTALK_DOCKER_CONFIG:-${XDG_CACHE_HOME:-$HOME/.cache}/wrktalk-agent/docker-config}"
suite="${DEBIAN_SUITE:-trixie}"
plugin="$dest/cli-plugins/docker-compose"
member="usr/libexec/docker/cli-plugins/docker-compose"

if [ -x "$plugin" ] && "$plugin" version >/dev/null 2>&1; then
    echo "$dest"
    exit 0
fi

command -v mmdebstrap >/dev/null 2>&1 || die "mmdebstrap not found: apt-get install mmdebstrap"

tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT

echo "install-compose-v2: fetching docker-compose from Debian $suite (mmdebstrap)" >&2
mirror=()
if [ -n "${DEBIAN_MIRROR:-}" ]; then
    mirror=("$DEBIAN_MIRROR")
fi
if ! mmdebstrap --quiet --variant=extract --include=docker-compose \
    "$suite" "$tmp/extract.tar" "${mirror[@]}" >&2; then
    die "mmdebstrap could not fetch docker-compose from Debian $suite (see its lines above);" \
        "it needs the Debian archive (deb.debian.org, or DEBIAN_MIRROR=<url>)"
fi
if ! tar -xf "$tmp/extract.tar" -C "$tmp" "./$member" 2>/dev/null; then
    die "Debian $suite's docker-compose package has no $member (not Compose v2?)"
fi

mkdir -p "$dest/cli-plugins"
# Written beside the target and renamed: a concurrent run never sees half a binary.
install -m 0755 "$tmp/$member" "$plugin.tmp.$$"
mv -f "$plugin.tmp.$$" "$plugin"
version="$("$plugin" version 2>&1)" || die "the installed $plugin does not run: $version"
echo "install-compose-v2: $version, in $dest/cli-plugins" >&2
echo "$dest"
