# shellcheck shell=sh disable=SC2012
# Guest /init for the qemu-vhost integration test (busybox sh, PID 1).
# run.sh prepends the shebang and these settings:
#   MARKER       the result line prefix the host looks for
# The host test sets ZCNET_N, ZCNET_CSUM and ZCNET_TSO on the kernel command
# line (the kernel hands unknown name=value parameters to init as
# environment variables): the frame counts of each kind /guest sends.
# Every path ends in finish, which prints "$MARKER rc=N" and powers off; the
# host treats a missing marker as a failure.

/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp

finish() {
	if [ "$1" != 0 ]; then
		echo "--- last kernel messages ---"
		dmesg | tail -n 30
	fi
	echo "$MARKER rc=$1"
	sync
	poweroff -f
	# If poweroff returns, panic=-1 plus QEMU's -no-reboot end the VM.
	echo o >/proc/sysrq-trigger
	sleep 5
	exit "$1"
}

fail() {
	echo "ZCNET-QEMU-VHOST-SETUP-FAILED: $*"
	finish 99
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mount -t tmpfs tmpfs /tmp || fail "mount /tmp"
echo; echo "zcnet-qemu-vhost guest: kernel $(uname -r)"

while read -r m; do
	insmod "/modules/$m.ko" || fail "insmod $m.ko"
done </modules/order
echo "modules loaded: $(tr '\n' ' ' </modules/order)"

i=0
while [ ! -e /sys/class/net/eth0 ]; do
	i=$((i + 1))
	[ $i -le 50 ] || fail "no eth0 after loading virtio_net (interfaces: $(ls /sys/class/net | tr '\n' ' '))"
	usleep 100000
done
# No IPv6: router solicitations and MLD reports would be echoed back too.
echo 1 >/proc/sys/net/ipv6/conf/all/disable_ipv6 2>/dev/null
echo 1 >/proc/sys/net/ipv6/conf/default/disable_ipv6 2>/dev/null
echo 1 >/proc/sys/net/ipv6/conf/eth0/disable_ipv6 2>/dev/null
ip link set eth0 up || fail "ip link set eth0 up"
i=0
while [ "$(cat /sys/class/net/eth0/carrier 2>/dev/null)" != 1 ]; do
	i=$((i + 1))
	[ $i -le 100 ] || fail "eth0 has no carrier after 10 s"
	usleep 100000
done
echo "ZCNET-QEMU-VHOST-LINK-UP $(cat /sys/class/net/eth0/address)"

echo ZCNET-QEMU-VHOST-BEGIN
/guest -n "${ZCNET_N:-1000}" -csum "${ZCNET_CSUM:-200}" -tso "${ZCNET_TSO:-20}"
finish $?
