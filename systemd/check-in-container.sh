#!/usr/bin/env bash
# Boots a minimal Debian with systemd as PID 1 in a container (systemd-nspawn),
# installs the release binaries and the units from this directory, and checks
# that the hardened, socket-activated broker really works: activation on the
# first connection, a stream over shared memory and over the socket fallback,
# reload, the journal, and a clean stop.
#
#   sudo systemd/check-in-container.sh            # needs root, network access
#                                                 # to Debian's package archive
# Environment: ROOT (container tree, default /var/tmp/shmbus-nspawn-root).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
root=${ROOT:-/var/tmp/shmbus-nspawn-root}
machine=shmbus-check

need() { command -v "$1" >/dev/null 2>&1; }
if ! need systemd-nspawn || ! need debootstrap; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq systemd-container debootstrap >/dev/null
fi
if [ ! -x "$root/lib/systemd/systemd" ]; then
    debootstrap --variant=minbase --include=systemd,dbus bookworm "$root"
fi

(cd "$repo" && cargo build --release --bins -p shmbusd -p shmbusctl)
install -m 0755 "$repo/target/release/shmbusd" "$repo/target/release/shmbusctl" "$root/usr/local/bin/"
install -m 0644 "$here/shmbusd.socket" "$here/shmbusd.service" "$root/etc/systemd/system/"
head -c $((64 << 20)) /dev/urandom > "$root/root/payload.bin"
cat > "$root/root/check.sh" <<'INNER'
#!/bin/bash
set -euo pipefail
trap 'systemctl status shmbusd.service --no-pager -l || true; journalctl -u shmbusd.service --no-pager | tail -n 30' ERR
systemctl daemon-reload
systemctl enable --now shmbusd.socket
systemctl is-active shmbusd.socket
systemctl is-active shmbusd.service && { echo "service should not run before a connection"; exit 1; } || true
shmbusctl --socket /run/shmbus/bus.sock status           # activates the broker
systemctl is-active shmbusd.service
shmbusctl --socket /run/shmbus/bus.sock serve big /root/payload.bin &
server=$!
sleep 1
want=$(sha256sum < /root/payload.bin)
for t in shm socket; do
    got=$(shmbusctl --socket /run/shmbus/bus.sock cat big --transport "$t" | sha256sum)
    [ "$got" = "$want" ] || { echo "cat over $t: checksum mismatch"; exit 1; }
    echo "cat over $t: byte-exact"
done
systemctl reload shmbusd.service
systemctl is-active shmbusd.service
shmbusctl --socket /run/shmbus/bus.sock status
kill $server
systemctl show shmbusd.service -p MainPID -p User -p NRestarts -p StatusText
journalctl -u shmbusd.service --no-pager -o short-monotonic | tail -n 20
journalctl -u shmbusd.service -p warning --no-pager | tail -n 5
systemctl stop shmbusd.service shmbusd.socket
systemctl show shmbusd.service -p Result -p ExecMainStatus
echo "CONTAINER CHECK PASSED"
INNER
chmod +x "$root/root/check.sh"
cat > "$root/etc/systemd/system/shmbus-check.service" <<'UNIT'
[Unit]
Description=Run the shmbus container check
After=multi-user.target
[Service]
Type=oneshot
ExecStart=/bin/bash -c '/root/check.sh > /root/check.log 2>&1; echo $? > /root/check.rc; systemctl poweroff'
[Install]
WantedBy=multi-user.target
UNIT
ln -sf /etc/systemd/system/shmbus-check.service "$root/etc/systemd/system/multi-user.target.wants/shmbus-check.service"
rm -f "$root/root/check.rc" "$root/root/check.log"
# The host need not run systemd: no machine registration, no scope unit.
timeout 300 systemd-nspawn -q -D "$root" -M "$machine" --boot --private-network \
    --register=no --keep-unit >/dev/null 2>&1 || true
cat "$root/root/check.log" 2>/dev/null || echo "no log: the container did not run the check"
[ "$(cat "$root/root/check.rc" 2>/dev/null)" = 0 ]
