# shellcheck shell=sh
# Guest /init for the qemu-zerocopy test, after the common start in
# test/lib/guest-init.sh (run.sh puts it before this, with MARKER and
# SETUP_FAILED). Busybox only. The host test passes on the kernel command
# line (the kernel hands unknown name=value parameters to init as
# environment variables):
#   ZCQ_MIB   MiB to send to the namespace (the namespace sends its own file)
#   ZCQ_MODE  full: ping both ways, a transfer each way, statistics, power
#             off; stream: ping, then stream both ways until the host kills
#             QEMU
# Every step prints a ZCQ-... line the host waits for.

nsaddr=10.99.0.1

echo; echo "zcnet-qemu-zerocopy guest: kernel $(uname -r), mode ${ZCQ_MODE:-full}"
eth0_up
ip addr add 10.99.0.2/24 dev eth0 || fail "ip addr add 10.99.0.2/24 dev eth0"
# The virtio feature bits the driver negotiated, bit 0 first.
echo "ZCQ-FEATURES $(cat /sys/class/net/eth0/device/features)"
echo "ZCQ-MAC $(cat /sys/class/net/eth0/address)"

# A reader on this FIFO never sees end of file: busybox nc quits when its
# standard input ends, so a receiving nc reads from it.
mkfifo /tmp/hold || fail "mkfifo"
exec 3<>/tmp/hold

if [ "${ZCQ_MODE:-full}" = full ]; then
	head -c $((${ZCQ_MIB:-8} * 1048576)) /dev/urandom >/tmp/out || fail "making the data to send"
	set -- $(sha256sum </tmp/out)
	echo "ZCQ-SENT-SHA256 $1"
fi

# The first frame out is an ARP request: the namespace's address is not
# configured anywhere in the guest but on eth0's subnet.
out=$(ping -c 3 -W 10 "$nsaddr" 2>&1)
echo "$out"
received=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
echo "ZCQ-PING-HOST received=${received:-0}"

# The host pings us now (its own ARP request), then connects here to say go.
echo ZCQ-UP
nc -l -p 5009 <&3 >/tmp/go || fail "nc -l -p 5009 (waiting for the host's go)"

if [ "${ZCQ_MODE:-full}" = stream ]; then
	nc "$nsaddr" 5002 <&3 >/dev/null &
	echo ZCQ-STREAMING
	nc "$nsaddr" 5001 </dev/zero
	fail "the stream to the namespace ended (nc rc=$?) before QEMU was killed"
fi

echo ZCQ-TX-BEGIN
nc "$nsaddr" 5001 </tmp/out || fail "nc $nsaddr 5001 (sending) failed"
echo ZCQ-TX-DONE
nc "$nsaddr" 5002 <&3 >/tmp/in || fail "nc $nsaddr 5002 (receiving) failed"
set -- $(sha256sum </tmp/in)
echo "ZCQ-RECV-SHA256 $1 bytes=$(wc -c </tmp/in)"

s=
for f in /sys/class/net/eth0/statistics/*; do
	s="$s ${f##*/}=$(cat "$f")"
done
echo "ZCQ-STATS$s"
finish 0
