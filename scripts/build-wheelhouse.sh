#!/usr/bin/env bash
# Build the wheelhouse the image installs from, on this host, so that `docker build`
# needs no package index:
#
#   scripts/build-wheelhouse.sh [DIR]      # default deploy/image/wheelhouse
#
# The six distributions of this repository become wheels (`pip wheel`); their dependencies
# are downloaded as binary wheels for the image's Python, which need not be this host's:
# WHEELHOUSE_PYTHON (default 3.13, Debian trixie's python3) and WHEELHOUSE_ARCH (default
# this machine's, x86_64 or aarch64). pip's own wheel comes along to install them. The
# directory is replaced only when everything is there (nothing half-written), reused while
# the sources have not changed, and its
# `python-version` file lets the Dockerfile refuse a wheelhouse made for another Python.
set -euo pipefail
cd "$(dirname "$0")/.."

die() {
    echo "build-wheelhouse: $*" >&2
    exit 1
}

out="${1:-deploy/image/wheelhouse}"
python_version="${WHEELHOUSE_PYTHON:-3.13}"
arch="${WHEELHOUSE_ARCH:-$(uname -m)}"
python="${PYTHON:-python3}"

case "$arch" in
    x86_64 | aarch64) ;;
    *) die "unsupported architecture $arch (WHEELHOUSE_ARCH: x86_64 or aarch64)" ;;
esac
[[ "$python_version" =~ ^3\.[0-9]+$ ]] || die "WHEELHOUSE_PYTHON=$python_version: expected 3.N"

# Reused while the sources, the Python version and the architecture are the same
# (FORCE=1 rebuilds it, e.g. to take newer dependencies).
key="$( (echo "$python_version $arch"; git ls-files -s -- pyproject.toml README.md wrktalk_agent plugins;
    git diff HEAD -- pyproject.toml README.md wrktalk_agent plugins) | sha256sum | cut -c1-16)"
if [ "${FORCE:-0}" != "1" ] && [ "$(cat "$out/key" 2>/dev/null)" = "$key" ]; then
    echo "build-wheelhouse: $out is up to date" >&2
    exit 0
fi

platforms=()
for glibc in 2_17 2_24 2_26 2_27 2_28 2_31 2_34 2_35 2_36 2_38 2_39; do
    platforms+=(--platform "manylinux_${glibc}_${arch}")
done
platforms+=(--platform "manylinux2014_${arch}")

tmp="$out.tmp.$$"
trap 'rm -rf "$tmp"' EXIT
rm -rf "$tmp"
mkdir -p "$tmp"

echo "build-wheelhouse: the six wheels of this repository" >&2
"$python" -m pip wheel --quiet --no-deps --wheel-dir "$tmp" \
    . plugins/helm plugins/compose plugins/nginx plugins/haproxy plugins/smtp \
    || die "pip wheel failed (see above)"

echo "build-wheelhouse: their dependencies, for CPython $python_version on $arch" >&2
"$python" -m pip download --quiet --dest "$tmp" --find-links "$tmp" \
    --only-binary=:all: --implementation cp --python-version "$python_version" "${platforms[@]}" \
    "wrktalk-agent[tui]" wrktalk-agent-helm wrktalk-agent-compose \
    wrktalk-agent-nginx wrktalk-agent-haproxy wrktalk-agent-smtp pip \
    || die "pip download failed (see above): a dependency has no wheel for CPython" \
        "$python_version on $arch, or the package index is unreachable"

echo "$python_version" >"$tmp/python-version"
echo "$key" >"$tmp/key"
rm -rf "$out"
mkdir -p "$(dirname "$out")"
mv "$tmp" "$out"
echo "build-wheelhouse: $(find "$out" -name '*.whl' | wc -l) wheels in $out" >&2
