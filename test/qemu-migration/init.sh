# shellcheck shell=sh
# Guest /init for the qemu-migration test, after the common start in
# test/lib/guest-init.sh. Busybox and /udpstream (statically built Go). The
# guest pings the peer (so the bridge learns its MAC on the source zcnet's
# port, and its ARP entry for the peer is made), then verifies the peer's
# UDP stream byte for byte until the stream's end marker (reading it in
# batches, ZCM_BATCH apart, so that frames wait in the socket with their
# data in the receive buffers the NIC wrote), through a live
# migration to another QEMU and zcnet; then prints eth0's statistics and
# powers off. Every step prints a ZCM-... line the host waits for.

peer=10.99.0.1

echo; echo "zcnet-qemu-migration guest: kernel $(uname -r)"
# Room for the stream's datagrams waiting between reads (the default UDP
# memory limit of a 256 MiB guest is a few MiB).
echo "65536 131072 262144" >/proc/sys/net/ipv4/udp_mem
eth0_up
ip addr add 10.99.0.2/24 dev eth0 || fail "ip addr add 10.99.0.2/24 dev eth0"
echo "ZCM-FEATURES $(cat /sys/class/net/eth0/device/features)"
# QEMU 7.2 under TCG loses guest writes during a migration unless the
# guest's TLB is flushed often (see tlbFlush in udpstream/main.go).
/udpstream tlbflush -period "${ZCM_TLBFLUSH:-1ms}" &
out=$(ping -c 3 -W 10 "$peer" 2>&1)
echo "$out"
received=$(echo "$out" | sed -n 's/.* \([0-9]*\) packets received.*/\1/p')
echo "ZCM-PING received=${received:-0}"
[ "${received:-0}" -gt 0 ] || fail "no reply to ping $peer"
/udpstream recv -port 6000 -size "${ZCM_SIZE:-1400}" -batch "${ZCM_BATCH:-0s}" || fail "udpstream recv failed (rc=$?)"
# The sender repeats its end marker for a second: let the last ones arrive
# so that eth0's counters hold every frame zcnet delivered.
sleep 2
s=
for f in /sys/class/net/eth0/statistics/*; do
	s="$s ${f##*/}=$(cat "$f")"
done
echo "ZCM-STATS$s"
finish 0
