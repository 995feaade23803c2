# shellcheck shell=sh disable=SC2012
# Guest /init for the VFIO integration test (busybox sh, PID 1).
# run.sh prepends the shebang and these settings:
#   PCI_VENDOR PCI_DEVICE  the function to hand to vfio-pci (0x8086 0x10d3)
#   TEST_RUN TEST_TIMEOUT  -test.run pattern and -test.timeout of /vfio.test
#   HUGEPAGES              2 MiB pages to reserve
#   MARKER                 the result line prefix the host looks for
# Every path ends in finish, which prints "$MARKER rc=N" and powers off; the
# host treats a missing marker as a failure.

/bin/busybox mkdir -p /sbin /usr/bin /usr/sbin
/bin/busybox --install -s
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/tmp TMPDIR=/tmp

finish() {
	if [ "$1" != 0 ]; then
		# quiet hides the kernel's info messages; VFIO explains most refusals there.
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
	echo "ZCNET-VFIO-SETUP-FAILED: $*"
	finish 99
}

mount -t proc proc /proc || fail "mount /proc"
mount -t sysfs sysfs /sys || fail "mount /sys"
mount -t devtmpfs devtmpfs /dev || fail "mount /dev"
mount -t tmpfs tmpfs /tmp || fail "mount /tmp"
echo; echo "zcnet-vfio guest: kernel $(uname -r), cmdline: $(cat /proc/cmdline)"

while read -r m; do
	insmod "/modules/$m.ko" || fail "insmod $m.ko"
done </modules/order
echo "modules loaded: $(tr '\n' ' ' </modules/order)"

addr=
for d in /sys/bus/pci/devices/*; do
	if [ "$(cat "$d/vendor")" = "$PCI_VENDOR" ] && [ "$(cat "$d/device")" = "$PCI_DEVICE" ]; then
		addr=${d##*/}
		break
	fi
done
if [ -z "$addr" ]; then
	for d in /sys/bus/pci/devices/*; do
		echo "  ${d##*/} $(cat "$d/vendor"):$(cat "$d/device")"
	done
	fail "no PCI function $PCI_VENDOR:$PCI_DEVICE (devices listed above)"
fi
dev=/sys/bus/pci/devices/$addr

[ -e "$dev/iommu_group" ] || fail "$addr has no IOMMU group: the guest IOMMU is off (intel_iommu=on, -device intel-iommu)"
group=$(basename "$(readlink "$dev/iommu_group")")
echo "device $addr ($PCI_VENDOR:$PCI_DEVICE) in IOMMU group $group with: $(ls "/sys/kernel/iommu_groups/$group/devices" | tr '\n' ' ')"

if [ -e "$dev/driver" ]; then
	drv=$(basename "$(readlink "$dev/driver")")
	if [ "$drv" != vfio-pci ]; then
		echo "unbinding $addr from $drv"
		echo "$addr" >"$dev/driver/unbind" || fail "unbind $addr from $drv"
	fi
fi
echo vfio-pci >"$dev/driver_override" || fail "write driver_override of $addr"
echo "$addr" >/sys/bus/pci/drivers_probe || fail "drivers_probe $addr"
drv=
[ -e "$dev/driver" ] && drv=$(basename "$(readlink "$dev/driver")")
[ "$drv" = vfio-pci ] || fail "$addr did not bind to vfio-pci (driver: ${drv:-none}; see the kernel messages below)"

i=0
while [ ! -c "/dev/vfio/$group" ]; do
	i=$((i + 1))
	[ $i -le 50 ] || fail "/dev/vfio/$group did not appear"
	usleep 100000
done
[ -c /dev/vfio/vfio ] || fail "/dev/vfio/vfio (the container device) is missing"
echo "bound $addr to vfio-pci: $(ls /dev/vfio | tr '\n' ' ')"

if [ "$HUGEPAGES" -gt 0 ]; then
	echo "$HUGEPAGES" >/proc/sys/vm/nr_hugepages || fail "reserve $HUGEPAGES hugepages"
	mkdir -p /dev/hugepages
	mount -t hugetlbfs hugetlbfs /dev/hugepages || fail "mount hugetlbfs"
	echo "hugepages: $(cat /proc/sys/vm/nr_hugepages) x 2 MiB at /dev/hugepages"
fi

cd /
echo ZCNET-VFIO-BEGIN
ZCNET_VFIO_DEVICE=$addr ZCNET_VFIO_GROUP=$group \
	/vfio.test -test.v -test.run "$TEST_RUN" -test.timeout "$TEST_TIMEOUT"
finish $?
