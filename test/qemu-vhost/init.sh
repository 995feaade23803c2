# shellcheck shell=sh disable=SC2012
# Guest /init for the qemu-vhost integration test, after the common start in
# test/lib/guest-init.sh (which run.sh puts before it, with MARKER and
# SETUP_FAILED). The host test sets ZCNET_N, ZCNET_CSUM and ZCNET_TSO on the
# kernel command line (the kernel hands unknown name=value parameters to init
# as environment variables): the frame counts of each kind /guest sends.

echo; echo "zcnet-qemu-vhost guest: kernel $(uname -r)"
echo "modules loaded: $(tr '\n' ' ' </modules/order)"

# No IPv6 (eth0_up): router solicitations and MLD reports would be echoed
# back too.
eth0_up
echo "ZCNET-QEMU-VHOST-LINK-UP $(cat /sys/class/net/eth0/address)"

echo ZCNET-QEMU-VHOST-BEGIN
/guest -n "${ZCNET_N:-1000}" -csum "${ZCNET_CSUM:-200}" -tso "${ZCNET_TSO:-20}"
finish $?
