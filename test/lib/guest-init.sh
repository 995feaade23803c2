# shellcheck shell=sh
# The common start of a QEMU test guest's /init (busybox sh, PID 1). A
# harness builds /init as: a shebang and its settings, this file, then its
# own init.sh. Settings this file needs:
#   MARKER        the result line prefix the host looks for
#   SETUP_FAILED  the prefix of the line that says why set-up failed
# Every path ends in finish, which prints "$MARKER rc=N" and powers off; the
# host treats a missing marker as a failure. eth0_up is for the harness's
# own part.

/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp

finish() {
	if [ "$1" != 0 ]; then
		# quiet hides the kernel's info messages; the drivers explain most
		# refusals there.
		echo "--- last kernel messages ---"
		dmesg | tail -n 30
	fi
	echo "$MARKER rc=$1"
	sync
	poweroff -f
	# poweroff should not return; if it does, ask the kernel directly, and
	# failing that let PID 1 exit: panic=-1 reboots and QEMU's -no-reboot
	# turns that into an exit.
	echo o >/proc/sysrq-trigger
	sleep 5
	exit "$1"
}

fail() {
	echo "$SETUP_FAILED: $*"
	finish 99
}

# eth0_up waits for the virtio-net interface, turns IPv6 off (router
# solicitations and MLD reports would be traffic the test did not make),
# brings eth0 up and waits up to 10 s for its carrier.
eth0_up() {
	i=0
	while [ ! -e /sys/class/net/eth0 ]; do
		i=$((i + 1))
		# shellcheck disable=SC2012
		[ $i -le 50 ] || fail "no eth0 after loading virtio_net (interfaces: $(ls /sys/class/net | tr '\n' ' '))"
		usleep 100000
	done
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
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mount -t tmpfs tmpfs /tmp || fail "mount /tmp"

# The modules, in dependency order (qemu_guest_rootfs wrote the list).
while read -r m; do
	insmod "/modules/$m.ko" || fail "insmod $m.ko"
done </modules/order
