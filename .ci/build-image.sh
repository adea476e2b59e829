#!/usr/bin/env bash
# Builds the project's Dockerfile without Docker and runs the image (docs/deploy.md, "Without
# Docker"). Run as root on Debian bookworm; needs Debian's mirror and PyPI, not Docker Hub:
#   1. debootstrap a bookworm root filesystem (python3 = 3.11, python-is-python3 so `python`
#      resolves, python3-venv for `python -m venv`), cached as a tarball keyed by its recipe;
#   2. import it into buildah's storage as localhost/kvsched-base:<key>, with this machine's CA
#      bundle (so pip trusts what this machine trusts, a TLS-inspecting proxy included);
#   3. `buildah bud --isolation chroot --layers` the Dockerfile's default target with
#      --build-arg PYTHON_IMAGE=<that base> (the Dockerfile's own default stays the registry's
#      python:3.11.7-slim-bookworm), tagged $KVSCHED_IMAGE;
#   4. .ci/check-image.py runs the image's ENTRYPOINT+CMD with `buildah run --isolation chroot`
#      on the host network and checks /ready, /health, a streamed chat completion, /metrics, the
#      uid of the server processes and the HEALTHCHECK; it always stops the server.
# Installs debootstrap and buildah with apt-get when missing. Idempotent; warm runs reuse the
# base and buildah's layer cache. Options: --report FILE (the check's JSON), --no-check.
# Environment: KVSCHED_IMAGE (default localhost/kvsched:ci), KVSCHED_IMAGE_CACHE (default
# /var/cache/kvsched-image), KVSCHED_BASE_MAX_AGE_DAYS (default 30: older bases are remade, for
# Debian's updates), DEBIAN_MIRROR (default http://deb.debian.org/debian).
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE=${KVSCHED_IMAGE:-localhost/kvsched:ci}
CACHE=${KVSCHED_IMAGE_CACHE:-/var/cache/kvsched-image}
MAX_AGE_DAYS=${KVSCHED_BASE_MAX_AGE_DAYS:-30}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
SUITE=bookworm
PACKAGES=python3,python3-venv,python-is-python3
CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt
REPORT=""
CHECK=1

die() {
    echo "build-image: $*" >&2
    exit 1
}
step() { echo "build-image: $* ($(( SECONDS - T0 )) s)" >&2; }

while [ $# -gt 0 ]; do
    case "$1" in
        --report) REPORT=$2; shift 2 ;;
        --no-check) CHECK=0; shift ;;
        *) die "unknown option $1 (options: --report FILE, --no-check)" ;;
    esac
done
T0=$SECONDS

# ---- tools ----
[ "$(id -u)" -eq 0 ] || die "run as root: debootstrap and buildah's chroot isolation need it"
if ! command -v debootstrap >/dev/null || ! command -v buildah >/dev/null; then
    command -v apt-get >/dev/null || die "debootstrap/buildah missing and no apt-get: install them"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q || die "apt-get update failed (is Debian's mirror reachable?)"
    apt-get install -y -q --no-install-recommends debootstrap buildah \
        || die "apt-get install debootstrap buildah failed"
fi
command -v python3 >/dev/null || die "python3 is needed on this machine for .ci/check-image.py"
buildah --version >&2

# ---- 1. the bookworm root filesystem, as a cached tarball ----
mkdir -p "$CACHE"
ARCH=$(dpkg --print-architecture)
SOURCES="deb $MIRROR $SUITE main
deb $MIRROR $SUITE-updates main
deb http://deb.debian.org/debian-security $SUITE-security main"
RECIPE="v1 $SUITE $ARCH minbase $PACKAGES $MIRROR
$SOURCES"
KEY=$(printf '%s' "$RECIPE" | sha256sum | cut -c1-16)
TARBALL="$CACHE/rootfs-$SUITE-$KEY.tar"
if [ -f "$TARBALL" ] && [ -n "$(find "$TARBALL" -mtime +"$MAX_AGE_DAYS")" ]; then
    step "base $TARBALL is older than $MAX_AGE_DAYS days: remaking it"
    rm -f "$TARBALL"
fi
if [ ! -f "$TARBALL" ]; then
    ROOTFS=$(mktemp -d "$CACHE/rootfs.XXXXXX")
    trap 'rm -rf "$ROOTFS"' EXIT
    step "debootstrap $SUITE ($PACKAGES) from $MIRROR"
    debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$ROOTFS" "$MIRROR" \
        >"$CACHE/debootstrap.log" 2>&1 \
        || die "debootstrap failed; the end of $CACHE/debootstrap.log:
$(tail -n 20 "$CACHE/debootstrap.log")"
    printf '%s\n' "$SOURCES" >"$ROOTFS/etc/apt/sources.list"
    "$ROOTFS/usr/bin/python" --version >/dev/null 2>&1 \
        || die "the debootstrapped root has no working /usr/bin/python"
    # no device nodes (the runtime provides /dev), no downloaded .debs, no apt lists
    tar -C "$ROOTFS" --numeric-owner \
        --exclude='./dev/*' --exclude='./proc/*' --exclude='./sys/*' --exclude='./run/*' \
        --exclude='./var/cache/apt/archives/*.deb' --exclude='./var/lib/apt/lists/*' \
        -cf "$TARBALL.partial" .
    mv "$TARBALL.partial" "$TARBALL"
    rm -rf "$ROOTFS"
    trap - EXIT
fi
step "base root filesystem: $TARBALL"

# ---- 2. import it as a local base image ----
CA_SUM=none
[ -f "$CA_BUNDLE" ] && CA_SUM=$(sha256sum "$CA_BUNDLE" | cut -c1-64)
BASE_KEY=$(printf '%s %s' "$(sha256sum "$TARBALL" | cut -c1-64)" "$CA_SUM" | sha256sum | cut -c1-16)
BASE="localhost/kvsched-base:$SUITE-$BASE_KEY"
if ! buildah inspect --type image "$BASE" >/dev/null 2>&1; then
    step "importing $BASE"
    CTR=$(buildah from --pull=never scratch)
    trap 'buildah rm "$CTR" >/dev/null 2>&1 || true' EXIT
    buildah add --quiet "$CTR" "$TARBALL" / >/dev/null
    CONFIG=(--env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
        --env LANG=C.UTF-8 --cmd '["python3"]' --label "org.kvsched.base-recipe=$KEY")
    if [ -f "$CA_BUNDLE" ]; then
        buildah copy --quiet "$CTR" "$CA_BUNDLE" /etc/ssl/certs/ca-certificates.crt >/dev/null
        CONFIG+=(--env PIP_CERT=/etc/ssl/certs/ca-certificates.crt)  # pip ignores the system store
    fi
    buildah config "${CONFIG[@]}" "$CTR"
    buildah commit --quiet --rm "$CTR" "$BASE" >/dev/null
    trap - EXIT
fi
PROBE=$(buildah from --pull=never "$BASE")
python_version=$(buildah run --isolation chroot "$PROBE" -- python --version 2>&1) || true
buildah rm "$PROBE" >/dev/null
case "$python_version" in
    "Python 3.11."*) step "base image $BASE: $python_version" ;;
    *) die "base image $BASE: \`python --version\` gave '$python_version', not Python 3.11" ;;
esac

# ---- 3. the project's Dockerfile, default target ----
OLD_ID=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE" 2>/dev/null || true)
step "buildah bud --target cpu -> $IMAGE"
buildah bud --isolation chroot --layers --pull=never --format docker --force-rm \
    --target cpu --build-arg "PYTHON_IMAGE=$BASE" -t "$IMAGE" . >"$CACHE/bud.log" 2>&1 \
    || die "buildah bud failed; the end of $CACHE/bud.log:
$(tail -n 30 "$CACHE/bud.log")"
NEW_ID=$(buildah inspect --type image --format '{{.FromImageID}}' "$IMAGE")
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$NEW_ID" ]; then
    buildah rmi "$OLD_ID" >/dev/null 2>&1 || true  # the replaced image, not the layer cache
fi
step "built $IMAGE (${NEW_ID:0:12}, $(buildah images --format '{{.Size}}' "$IMAGE"))"

# ---- 4. run it and check what it serves ----
if [ "$CHECK" -eq 1 ]; then
    python3 .ci/check-image.py "$IMAGE" ${REPORT:+--report "$REPORT"} \
        || die "the image was built but did not pass .ci/check-image.py (messages above)"
fi
step "done"
