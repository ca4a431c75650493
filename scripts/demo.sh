#!/bin/bash
# Porta's main job, shown: two containers, A and B, each with its own file server, both
# writing and reading files in their root. A's file server is killed with SIGKILL several
# times while both work; B is untouched, and A carries on without an error.
# Run as root on Debian/Ubuntu: bash scripts/demo.sh
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/deps.sh
if [ -f "$HOME/.cargo/env" ] && ! command -v cargo >/dev/null 2>&1; then . "$HOME/.cargo/env"; fi
echo "=== building porta"
cargo build --release -p porta
porta="$PWD/target/release/porta"
root=/run/porta-demo
work=$(mktemp -d /var/tmp/porta-demo.XXXXXX)

cleanup() {
  for c in demo-a demo-b; do "$porta" --root "$root" delete --force "$c" >/dev/null 2>&1 || true; done
  rm -rf "$work"
  rmdir "$root" 2>/dev/null || true
}
trap cleanup EXIT

# A busybox root file system per container.
for c in a b; do
  r="$work/$c/rootfs"
  mkdir -p "$r"/{bin,proc,sys,dev,tmp,etc,data}
  cp /bin/busybox "$r/bin/busybox"
  for a in $("$r/bin/busybox" --list); do [ "$a" = busybox ] || ln -s busybox "$r/bin/$a"; done
  echo "root:x:0:0:root:/root:/bin/sh" > "$r/etc/passwd"
  echo "root:x:0:" > "$r/etc/group"
  (cd "$work/$c" && "$porta" spec)
  # Each writes, fsyncs, reads back and deletes 1500 files, counting every error.
  jq '.process.terminal = false | .root.readonly = false | .hostname = "demo-'$c'"
      | .process.args = ["sh", "-c", "err=0; i=0; while [ $i -lt 1500 ]; do echo payload-$i > /data/f$i || err=$((err+1)); sync /data/f$i || err=$((err+1)); [ \"$(cat /data/f$i)\" = payload-$i ] || err=$((err+1)); mv /data/f$i /data/g$i || err=$((err+1)); rm /data/g$i || err=$((err+1)); i=$((i+1)); done; echo \"$(hostname): 1500 files written, read back and removed, $err errors\""]' \
    "$work/$c/config.json" > "$work/$c/config.tmp" && mv "$work/$c/config.tmp" "$work/$c/config.json"
done

echo "=== starting containers A and B, each with its own file server"
"$porta" --root "$root" run --detach --bundle "$work/a" demo-a > "$work/a.out" 2>&1
"$porta" --root "$root" run --detach --bundle "$work/b" demo-b > "$work/b.out" 2>&1
fs_pid() { "$porta" --root "$root" state "$1" | jq -r '.servers[] | select(.name == "fs") | .pid'; }
echo "A's file server: pid $(fs_pid demo-a); B's file server: pid $(fs_pid demo-b)"
echo "the host's mount table holds no container root:"; (mount | grep -E "porta-demo-(a|b)" || echo "  (none)")

echo "=== killing A's file server (SIGKILL) 5 times while both containers work"
for n in 1 2 3 4 5; do
  sleep 0.3
  p=$(fs_pid demo-a)
  [ -n "$p" ] && [ "$p" != 0 ] && kill -9 "$p" 2>/dev/null && echo "  kill -9 $p (A's file server)"
done

for c in demo-a demo-b; do
  while [ "$("$porta" --root "$root" state "$c" | jq -r .status)" != stopped ]; do sleep 0.2; done
done
echo "=== results"
cat "$work/a.out" "$work/b.out"
echo "A's servers: $("$porta" --root "$root" state demo-a | jq -c '.servers')"
echo "B's servers: $("$porta" --root "$root" state demo-b | jq -c '.servers')"
