#!/bin/bash
# Installs, as root on Debian/Ubuntu, everything Porta's tests, benchmark and demo need.
# Idempotent: when every package is already installed it does nothing (and needs no
# network). Usage: bash scripts/deps.sh
set -euo pipefail

PKGS=(
  # root file system for the integration tests
  busybox-static tar
  # runtimes to compare against and to drive Porta
  runc crun runsc podman conmon catatonit containerd uidmap slirp4netns fuse-overlayfs
  # Docker (the docker integration test starts a private dockerd)
  docker.io
  # FUSE and seccomp (the file server, the seccomp crate), building
  fuse3 libfuse3-dev libseccomp-dev pkg-config make gcc libc6-dev
  # tools the tests, benchmark and demo call
  iproute2 procps psmisc util-linux sqlite3 jq python3 strace file ca-certificates acl
  # fs_mark 3.3, run inside the containers by the benchmark's fsmark-real workload
  fsmark
  # a private systemd and D-Bus system bus for the systemd cgroup driver tests
  systemd dbus
  # setcap, for the file-capability semantics test of the file server
  libcap2-bin
  # CRIU, for checkpoint and restore of containers with a kernel-mounted root
  criu
  # the CRI client of the cri integration test (gRPC in Debian's python3, protoc)
  python3-grpcio python3-protobuf protobuf-compiler
  # the Debian root of the translator tests (porta_integration::debian): apt and dpkg-deb
  # fetch and unpack Debian packages, gpgv and the archive keyring check their signatures;
  # the ext4 (mke2fs, e2fsck, debugfs) and squashfs images they serve
  apt dpkg gpgv debian-archive-keyring e2fsprogs squashfs-tools
)

SUDO=()
if [ "$(id -u)" != 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO=(sudo); else
    echo "deps.sh: run as root (or install sudo)" >&2; exit 1
  fi
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "deps.sh: no apt-get: install by hand: ${PKGS[*]}" >&2
  exit 1
fi

missing=()
for p in "${PKGS[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if [ "${#missing[@]}" -gt 0 ]; then
  echo "deps.sh: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  "${SUDO[@]}" apt-get update -qq
  # keep only the packages this distribution has (runsc, e.g., is not everywhere)
  avail=()
  for p in "${missing[@]}"; do
    if apt-cache show "$p" >/dev/null 2>&1; then avail+=("$p"); else
      echo "deps.sh: package $p not available here; skipping" >&2
    fi
  done
  if [ "${#avail[@]}" -gt 0 ]; then
    "${SUDO[@]}" apt-get install -y -qq --no-install-recommends "${avail[@]}" >/dev/null
  fi
fi

# A CRIU that runs on this kernel (Debian 12's does not on recent kernels).
"${SUDO[@]}" bash "$(dirname "$0")/criu.sh"

if ! command -v cargo >/dev/null 2>&1 && [ ! -x "$HOME/.cargo/bin/cargo" ]; then
  cat >&2 <<'MSG'
deps.sh: cargo is missing. Install Rust (1.85 or newer) with rustup:
    curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y
    . "$HOME/.cargo/env"
MSG
fi
# clippy and rustfmt: the lint stage of scripts/test.sh runs both.
if [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null 2>&1; then . "$HOME/.cargo/env"; fi
if command -v cargo >/dev/null 2>&1; then
  if ! cargo clippy --version >/dev/null 2>&1 || ! cargo fmt --version >/dev/null 2>&1; then
    if command -v rustup >/dev/null 2>&1; then
      rustup component add clippy rustfmt >/dev/null 2>&1 || echo "deps.sh: rustup could not add clippy and rustfmt" >&2
    else
      echo "deps.sh: cargo clippy or cargo fmt is missing (install the clippy and rustfmt components of your Rust toolchain)" >&2
    fi
  fi
fi
echo "deps.sh: dependencies in place"
