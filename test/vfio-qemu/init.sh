# shellcheck shell=sh disable=SC2012
# Guest /init for the VFIO integration test, after the common start in
# test/lib/guest-init.sh (which run.sh puts before it). run.sh also sets:
#   PCI_VENDOR PCI_DEVICE  the function to hand to vfio-pci (0x8086 0x10d3)
#   TEST_RUN TEST_TIMEOUT  -test.run pattern and -test.timeout of /vfio.test
#   HUGEPAGES              2 MiB pages to reserve
#   MARKER SETUP_FAILED    result and set-up failure line prefixes

echo; echo "zcnet-vfio guest: kernel $(uname -r), cmdline: $(cat /proc/cmdline)"
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
