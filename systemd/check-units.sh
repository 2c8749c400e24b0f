#!/usr/bin/env bash
# Checks the unit files: `systemd-analyze verify` on every unit (system and
# user, the bridge's too), and the exposure score of the system services
# (the broker and the bridge), which must stay at or below 1.5
# (`systemd-analyze security --offline=true`).
#
#   systemd/check-units.sh [path/to/shmbusd]     # default: target/debug/shmbusd
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$(dirname "$here")/target/debug/shmbusd}
max_exposure=1.5
[ -x "$bin" ] || { echo "check-units: $bin is not built"; exit 1; }
bin=$(realpath "$bin")   # ExecStart needs an absolute path
bridge=$(dirname "$bin")/shmbus-bridge
[ -x "$bridge" ] || { echo "check-units: $bridge is not built"; exit 1; }

# verify resolves ExecStart: check copies whose binary path points at the build.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for dir in "$here" "$here/user"; do
    sub=$tmp/$(basename "$dir")
    mkdir -p "$sub"
    for unit in "$dir"/*.socket "$dir"/*.service; do
        sed -e "s#/usr/local/bin/shmbusd#$bin#" -e "s#/usr/local/bin/shmbus-bridge#$bridge#" \
            "$unit" > "$sub/$(basename "$unit")"
    done
done
systemd-analyze verify --man=no "$tmp"/systemd/shmbusd.socket "$tmp"/systemd/shmbusd.service \
    "$tmp"/systemd/shmbus-bridge.service
echo "verify: system units clean"
# A user manager needs a runtime directory, even an empty one.
mkdir -p "$tmp/run"
XDG_RUNTIME_DIR=$tmp/run systemd-analyze --user verify --man=no \
    "$tmp"/user/shmbusd.socket "$tmp"/user/shmbusd.service
echo "verify: user units clean"

for unit in shmbusd.service shmbus-bridge.service; do
    score=$(systemd-analyze security --offline=true "$here/$unit" 2>&1 \
        | sed -n "s/.*Overall exposure level for $unit: \([0-9.]*\).*/\1/p")
    [ -n "$score" ] || { echo "security: no score for $unit"; exit 1; }
    echo "security: $unit exposure $score (limit $max_exposure)"
    awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'
done
