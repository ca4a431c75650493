#!/bin/bash
# Makes sure a CRIU that works on this kernel is installed, for checkpoint and restore.
# Debian 12's criu (3.17) cannot run on newer kernels ("criu check": the vDSO layout);
# when the installed one fails its own check, this builds CRIU 4.1.1 from Debian's source
# tarball (checksum verified) and installs it as /usr/local/sbin/criu (about a minute).
# Idempotent. Usage, as root: bash scripts/criu.sh
set -euo pipefail

VERSION=4.1.1
SHA256=f80a66cb3726bb2116266d4759ce3bcbfab7abdb6b6d430bf20dd41911717afe
URL=http://deb.debian.org/debian/pool/main/c/criu/criu_${VERSION}.orig.tar.xz
PREFIX=/usr/local/sbin

works() { "$1" check >/dev/null 2>&1; }

if command -v criu >/dev/null 2>&1 && works "$(command -v criu)"; then
  exit 0
fi
if [ -x "$PREFIX/criu" ] && works "$PREFIX/criu"; then
  exit 0
fi

echo "criu.sh: the installed criu cannot run on this kernel; building CRIU $VERSION"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends curl xz-utils make gcc libc6-dev pkgconf \
  libbsd-dev libcap-dev libgnutls28-dev libnet1-dev libnftables-dev libnl-3-dev \
  libprotobuf-c-dev libprotobuf-dev protobuf-c-compiler protobuf-compiler python3-protobuf \
  uuid-dev >/dev/null
work=$(mktemp -d /var/tmp/criu-build.XXXXXX)
trap 'rm -rf "$work"' EXIT
curl -sSf -o "$work/criu.tar.xz" "$URL"
echo "$SHA256  $work/criu.tar.xz" | sha256sum -c --quiet
tar -C "$work" -xf "$work/criu.tar.xz"
make -C "$work/criu-$VERSION" -j"$(nproc)" criu >"$work/build.log" 2>&1 || {
  tail -30 "$work/build.log" >&2
  echo "criu.sh: building CRIU $VERSION failed" >&2
  exit 1
}
install -m 755 "$work/criu-$VERSION/criu/criu" "$PREFIX/criu"
if ! works "$PREFIX/criu"; then
  "$PREFIX/criu" check >&2 || true
  echo "criu.sh: CRIU $VERSION does not pass its check on this kernel either" >&2
  exit 1
fi
echo "criu.sh: installed CRIU $VERSION as $PREFIX/criu"
