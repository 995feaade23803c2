# shellcheck shell=sh disable=SC2012
# Guest /init for the qemu-vhost integration test, after the common start in
# test/lib/guest-init.sh (which run.sh puts before it, with MARKER and
# SETUP_FAILED). The host test sets ZCNET_N, ZCNET_CSUM and ZCNET_TSO on the
# kernel command line (the kernel hands unknown name=value parameters to init
# as environment variables): the frame counts of each kind /guest sends.

echo; echo "zcnet-qemu-vhost guest: kernel $(uname -r)"
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
