# shellcheck shell=sh
# The common start of a QEMU test guest's /init (busybox sh, PID 1). A
# harness builds /init as: a shebang and its settings, this file, then its
# own init.sh. Settings this file needs:
#   MARKER        the result line prefix the host looks for
#   SETUP_FAILED  the prefix of the line that says why set-up failed
# Every path ends in finish, which prints "$MARKER rc=N" and powers off; the
# host treats a missing marker as a failure.

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

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mount -t tmpfs tmpfs /tmp || fail "mount /tmp"

# The modules, in dependency order (qemu_guest_rootfs wrote the list).
while read -r m; do
	insmod "/modules/$m.ko" || fail "insmod $m.ko"
done </modules/order
