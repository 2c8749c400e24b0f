#!/usr/bin/env bash
# Checks the unit files: `systemd-analyze verify` on every unit (system and
# user), and the exposure score of the system service, which must stay at or
# below 1.5 (`systemd-analyze security --offline=true`).
#
#   systemd/check-units.sh [path/to/shmbusd]     # default: target/debug/shmbusd
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
bin=${1:-$(dirname "$here")/target/debug/shmbusd}
max_exposure=1.5
[ -x "$bin" ] || { echo "check-units: $bin is not built"; exit 1; }
bin=$(realpath "$bin")   # ExecStart needs an absolute path

# verify resolves ExecStart: check copies whose binary path points at the build.
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for dir in "$here" "$here/user"; do
    sub=$tmp/$(basename "$dir")
    mkdir -p "$sub"
    for unit in "$dir"/*.socket "$dir"/*.service; do
        sed "s#/usr/local/bin/shmbusd#$bin#" "$unit" > "$sub/$(basename "$unit")"
    done
done
systemd-analyze verify --man=no "$tmp"/systemd/shmbusd.socket "$tmp"/systemd/shmbusd.service
echo "verify: system units clean"
# A user manager needs a runtime directory, even an empty one.
mkdir -p "$tmp/run"
XDG_RUNTIME_DIR=$tmp/run systemd-analyze --user verify --man=no \
    "$tmp"/user/shmbusd.socket "$tmp"/user/shmbusd.service
echo "verify: user units clean"

score=$(systemd-analyze security --offline=true "$here/shmbusd.service" 2>&1 \
    | sed -n 's/.*Overall exposure level for shmbusd.service: \([0-9.]*\).*/\1/p')
[ -n "$score" ] || { echo "security: no score"; exit 1; }
echo "security: exposure $score (limit $max_exposure)"
awk -v s="$score" -v m="$max_exposure" 'BEGIN { exit !(s <= m) }'
