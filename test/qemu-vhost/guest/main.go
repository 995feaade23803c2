// Command guest runs inside the QEMU guest of the qemu-vhost integration
// test. It sends frames out of the virtio-net interface (whose back end is
// zcnet's vhost-user loopback, which returns every frame with its MAC
// addresses swapped), receives the echoes on an AF_PACKET socket and checks
// each one byte for byte.
//
// Two phases run one after the other:
//
//   - plain: raw IPv4/UDP frames of 60 to 1514 bytes, checksums filled in,
//     no offloads involved;
//   - offload: a PACKET_VNET_HDR socket hands the virtio-net driver frames
//     whose UDP checksum is left to the device (NEEDS_CSUM) and TCP
//     super-frames to be segmented by the device (GSO TCPv4), so that the
//     driver puts checksum and TSO requests in the virtio-net header and
//     the back end must carry them (or act on them) correctly.
//
// The last line on stdout is "ZCNET-QEMU-VHOST-STATS ..." with the counts;
// the exit status is 0 only if every frame came back intact.
package main

import (
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

var (
	ifName   = flag.String("if", "eth0", "interface to send on")
	plainN   = flag.Int("n", 1000, "plain frames to send")
	csumN    = flag.Int("csum", 200, "UDP frames with the checksum left to the device (0: skip)")
	tsoN     = flag.Int("tso", 20, "TCP super-frames left to the device to segment (0: skip)")
	window   = flag.Int("window", 64, "frames in flight at most")
	recvWait = flag.Duration("timeout", 5*time.Second, "how long to wait for the next echo")
)

// peerMAC is the made-up station the frames are addressed to; the loopback
// sends them back from it.
var peerMAC = net.HardwareAddr{0x02, 0x00, 0x5a, 0xc0, 0x00, 0x01}

var (
	srcIP = [4]byte{10, 99, 0, 1}
	dstIP = [4]byte{10, 99, 0, 2}
)

const (
	ethHdr  = 14
	ipHdr   = 20
	udpHdr  = 8
	tcpHdr  = 20
	l4Start = ethHdr + ipHdr

	vnetHdrLen       = 10 // struct virtio_net_hdr (packet sockets use the short form)
	vnetNeedsCsum    = 1
	vnetDataValid    = 2
	vnetGSONone      = 0
	vnetGSOTCPv4     = 1
	tsoMSS           = 1448
	firstOffloadID   = 0x4000 // IP ids of the offload phase start here
	protoUDP, protoT = 17, 6
)

func main() {
	flag.Parse()
	st, err := run()
	fmt.Printf("ZCNET-QEMU-VHOST-STATS sent=%d received=%d plain=%d csum=%d csum_partial=%d csum_complete=%d tso=%d foreign=%d features=%s\n",
		st.sent, st.received, st.phase["plain"], st.phase["csum"], st.csumPartial, st.csumComplete, st.phase["tso"], st.foreign, virtioFeatures())
	if err != nil {
		fmt.Fprintf(os.Stderr, "guest: FAIL: %v\n", err)
		os.Exit(1)
	}
	fmt.Println("guest: all frames came back intact")
}

type stats struct {
	sent, received int
	phase          map[string]int
	foreign        int // frames on the interface that are not echoes of ours
	csumPartial    int // echoes still carrying NEEDS_CSUM (guest accepts partial checksums)
	csumComplete   int // echoes whose checksum the back end filled in
}

// probe is one frame to send and what its echo must look like.
type probe struct {
	phase string
	id    uint16
	vnet  []byte // virtio_net_hdr to send with it, nil on the plain socket
	frame []byte // as sent (checksum possibly partial)
	want  []byte // the echo, checksums complete, MACs still as sent
	gso   bool
}

func run() (stats, error) {
	st := stats{phase: map[string]int{}}
	ifc, err := net.InterfaceByName(*ifName)
	if err != nil {
		return st, fmt.Errorf("interface %s: %w", *ifName, err)
	}
	if len(ifc.HardwareAddr) != 6 {
		return st, fmt.Errorf("interface %s has no Ethernet address", *ifName)
	}
	if ifc.Flags&net.FlagUp == 0 {
		return st, fmt.Errorf("interface %s is down", *ifName)
	}
	mac := ifc.HardwareAddr
	fmt.Printf("guest: %s index %d mac %s mtu %d\n", ifc.Name, ifc.Index, mac, ifc.MTU)

	var plain []probe
	for i := range *plainN {
		plain = append(plain, plainProbe(uint16(i), mac))
	}
	if err := exchange(ifc.Index, false, plain, mac, &st); err != nil {
		return st, fmt.Errorf("plain phase: %w", err)
	}
	var off []probe
	for i := range *csumN {
		off = append(off, csumProbe(uint16(firstOffloadID+i), mac))
	}
	for i := range *tsoN {
		off = append(off, tsoProbe(uint16(firstOffloadID+*csumN+i), mac))
	}
	if len(off) > 0 {
		if err := exchange(ifc.Index, true, off, mac, &st); err != nil {
			return st, fmt.Errorf("offload phase: %w", err)
		}
	}
	return st, nil
}

// plainSize spreads frame sizes over 60..1514 and includes both ends.
func plainSize(i int) int {
	switch i {
	case 0:
		return 60
	case 1:
		return 1514
	}
	return 60 + (i*397)%1455
}

func plainProbe(id uint16, mac net.HardwareAddr) probe {
	f := udpFrame(id, plainSize(int(id)), mac)
	return probe{phase: "plain", id: id, frame: f, want: f}
}

// csumProbe is a UDP frame whose checksum field holds only the
// pseudo-header sum, as the kernel leaves it for CHECKSUM_PARTIAL.
func csumProbe(id uint16, mac net.HardwareAddr) probe {
	full := udpFrame(id, 60+(int(id)*211)%1455, mac)
	f := append([]byte(nil), full...)
	binary.BigEndian.PutUint16(f[l4Start+6:], pseudoSum(protoUDP, len(f)-l4Start))
	v := make([]byte, vnetHdrLen)
	v[0] = vnetNeedsCsum
	binary.LittleEndian.PutUint16(v[6:], l4Start)
	binary.LittleEndian.PutUint16(v[8:], 6)
	return probe{phase: "csum", id: id, vnet: v, frame: f, want: full}
}

// tsoProbe is a TCP super-frame of 2 to 6 segments for the device to
// segment, checksum partial as for csumProbe.
func tsoProbe(id uint16, mac net.HardwareAddr) probe {
	payload := tsoMSS + 1 + (int(id)*977)%(4*tsoMSS)
	size := l4Start + tcpHdr + payload
	full := make([]byte, size)
	ethernet(full, mac)
	ipv4(full, id, protoT)
	t := full[l4Start:]
	binary.BigEndian.PutUint16(t[0:], 40000)
	binary.BigEndian.PutUint16(t[2:], 5001)
	binary.BigEndian.PutUint32(t[4:], uint32(id)<<16)
	t[12] = 5 << 4
	t[13] = 0x18 // PSH|ACK
	binary.BigEndian.PutUint16(t[14:], 65535)
	fill(t[tcpHdr:], id)
	binary.BigEndian.PutUint16(t[16:], l4Checksum(protoT, t))
	f := append([]byte(nil), full...)
	binary.BigEndian.PutUint16(f[l4Start+16:], pseudoSum(protoT, len(t)))
	v := make([]byte, vnetHdrLen)
	v[0] = vnetNeedsCsum
	v[1] = vnetGSOTCPv4
	binary.LittleEndian.PutUint16(v[2:], l4Start+tcpHdr)
	binary.LittleEndian.PutUint16(v[4:], tsoMSS)
	binary.LittleEndian.PutUint16(v[6:], l4Start)
	binary.LittleEndian.PutUint16(v[8:], 16)
	return probe{phase: "tso", id: id, vnet: v, frame: f, want: full, gso: true}
}

func udpFrame(id uint16, size int, mac net.HardwareAddr) []byte {
	f := make([]byte, size)
	ethernet(f, mac)
	ipv4(f, id, protoUDP)
	u := f[l4Start:]
	binary.BigEndian.PutUint16(u[0:], 40000)
	binary.BigEndian.PutUint16(u[2:], 9999)
	binary.BigEndian.PutUint16(u[4:], uint16(len(u)))
	fill(u[udpHdr:], id)
	binary.BigEndian.PutUint16(u[6:], l4Checksum(protoUDP, u))
	return f
}

func ethernet(f []byte, src net.HardwareAddr) {
	copy(f[0:6], peerMAC)
	copy(f[6:12], src)
	binary.BigEndian.PutUint16(f[12:], unix.ETH_P_IP)
}

func ipv4(f []byte, id uint16, proto byte) {
	h := f[ethHdr : ethHdr+ipHdr]
	h[0] = 0x45
	binary.BigEndian.PutUint16(h[2:], uint16(len(f)-ethHdr))
	binary.BigEndian.PutUint16(h[4:], id)
	h[6] = 0x40 // don't fragment
	h[8] = 64
	h[9] = proto
	copy(h[12:16], srcIP[:])
	copy(h[16:20], dstIP[:])
	binary.BigEndian.PutUint16(h[10:], ^fold(sum(h)))
}

func fill(p []byte, id uint16) {
	for i := range p {
		p[i] = byte(int(id)*31 + i*7)
	}
}

func sum(p []byte) uint32 {
	var s uint32
	for i := 0; i+1 < len(p); i += 2 {
		s += uint32(binary.BigEndian.Uint16(p[i:]))
	}
	if len(p)%2 == 1 {
		s += uint32(p[len(p)-1]) << 8
	}
	return s
}

func fold(s uint32) uint16 {
	for s > 0xffff {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

func pseudo(proto byte, l4len int) uint32 {
	return sum(srcIP[:]) + sum(dstIP[:]) + uint32(proto) + uint32(l4len)
}

// pseudoSum is what the kernel stores in the checksum field of a
// CHECKSUM_PARTIAL packet: the folded, not inverted, pseudo-header sum.
func pseudoSum(proto byte, l4len int) uint16 { return fold(pseudo(proto, l4len)) }

// l4Checksum is the final checksum of segment p (its checksum field zero).
func l4Checksum(proto byte, p []byte) uint16 {
	c := ^fold(pseudo(proto, len(p)) + sum(p))
	if c == 0 && proto == protoUDP {
		c = 0xffff
	}
	return c
}

// exchange sends probes through one AF_PACKET socket, at most *window
// outstanding, and checks every echo.
func exchange(ifindex int, vnet bool, probes []probe, mac net.HardwareAddr, st *stats) error {
	fd, err := unix.Socket(unix.AF_PACKET, unix.SOCK_RAW|unix.SOCK_CLOEXEC, int(htons(unix.ETH_P_IP)))
	if err != nil {
		return fmt.Errorf("AF_PACKET socket: %w", err)
	}
	defer unix.Close(fd)
	if vnet {
		if err := unix.SetsockoptInt(fd, unix.SOL_PACKET, unix.PACKET_VNET_HDR, 1); err != nil {
			return fmt.Errorf("PACKET_VNET_HDR: %w", err)
		}
	}
	if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, 8<<20); err != nil {
		return fmt.Errorf("SO_RCVBUFFORCE: %w", err)
	}
	tv := unix.NsecToTimeval(recvWait.Nanoseconds())
	if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		return fmt.Errorf("SO_RCVTIMEO: %w", err)
	}
	if err := unix.Bind(fd, &unix.SockaddrLinklayer{Protocol: htons(unix.ETH_P_IP), Ifindex: ifindex}); err != nil {
		return fmt.Errorf("bind AF_PACKET socket to ifindex %d: %w", ifindex, err)
	}
	byID := make(map[uint16]int, len(probes))
	for i, p := range probes {
		byID[p.id] = i
	}
	seen := make([]bool, len(probes))
	buf := make([]byte, 65536+vnetHdrLen)
	sent, got, next := 0, 0, 0
	for got < len(probes) {
		for sent < len(probes) && sent-got < *window {
			p := probes[sent]
			out := append(append([]byte(nil), p.vnet...), p.frame...)
			if err := unix.Sendto(fd, out, 0, &unix.SockaddrLinklayer{Ifindex: ifindex}); err != nil {
				return fmt.Errorf("send %s frame id %d (%d bytes): %w", p.phase, p.id, len(p.frame), err)
			}
			sent++
			st.sent++
		}
		n, from, err := unix.Recvfrom(fd, buf, 0)
		if err != nil {
			if errors.Is(err, unix.EAGAIN) {
				return fmt.Errorf("no echo within %v: sent %d, got %d back; next expected id %d", *recvWait, sent, got, probes[next].id)
			}
			return fmt.Errorf("receive: %w", err)
		}
		if ll, ok := from.(*unix.SockaddrLinklayer); ok && ll.Pkttype == unix.PACKET_OUTGOING {
			continue // our own transmission, looped to packet taps
		}
		pkt := buf[:n]
		var hdr []byte
		if vnet {
			if n < vnetHdrLen {
				return fmt.Errorf("received %d bytes, less than a virtio_net_hdr", n)
			}
			hdr, pkt = pkt[:vnetHdrLen], pkt[vnetHdrLen:]
		}
		i, ok := echoIndex(pkt, mac, byID)
		if !ok {
			st.foreign++
			continue
		}
		p := probes[i]
		if seen[i] {
			return fmt.Errorf("%s frame id %d came back twice", p.phase, p.id)
		}
		if err := check(p, hdr, pkt, mac, st); err != nil {
			return fmt.Errorf("%s frame id %d (%d bytes): %w", p.phase, p.id, len(p.frame), err)
		}
		if i != next {
			return fmt.Errorf("%s frame id %d came back before id %d: the loopback reordered", p.phase, p.id, probes[next].id)
		}
		seen[i] = true
		next++
		got++
		st.received++
		st.phase[p.phase]++
	}
	return nil
}

// echoIndex finds which probe pkt echoes, by the IP id of a frame from our
// test addresses sent to our MAC.
func echoIndex(pkt []byte, mac net.HardwareAddr, byID map[uint16]int) (int, bool) {
	if len(pkt) < l4Start || string(pkt[0:6]) != string(mac) ||
		binary.BigEndian.Uint16(pkt[12:]) != unix.ETH_P_IP ||
		string(pkt[ethHdr+12:ethHdr+16]) != string(srcIP[:]) || string(pkt[ethHdr+16:ethHdr+20]) != string(dstIP[:]) {
		return 0, false
	}
	i, ok := byID[binary.BigEndian.Uint16(pkt[ethHdr+4:])]
	return i, ok
}

// check compares an echo with what was sent: MACs swapped, everything else
// identical once a checksum the back end left partial is completed.
func check(p probe, hdr, pkt []byte, mac net.HardwareAddr, st *stats) error {
	if len(pkt) != len(p.want) {
		return fmt.Errorf("came back with %d bytes", len(pkt))
	}
	if string(pkt[0:6]) != string(mac) || string(pkt[6:12]) != string(peerMAC) {
		return fmt.Errorf("MACs not swapped: dst %s src %s", net.HardwareAddr(pkt[0:6]), net.HardwareAddr(pkt[6:12]))
	}
	got := append([]byte(nil), pkt...)
	if hdr != nil {
		flags, gsoType := hdr[0], hdr[1]
		gsoSize := binary.LittleEndian.Uint16(hdr[4:])
		start := int(binary.LittleEndian.Uint16(hdr[6:]))
		off := int(binary.LittleEndian.Uint16(hdr[8:]))
		if p.gso {
			if gsoType&^0x80 != vnetGSOTCPv4 || gsoSize != tsoMSS {
				return fmt.Errorf("super-frame came back with gso type %#x size %d, want TCPv4 size %d", gsoType, gsoSize, tsoMSS)
			}
		} else if gsoType != vnetGSONone {
			return fmt.Errorf("came back with gso type %#x", gsoType)
		}
		switch {
		case flags&vnetNeedsCsum != 0:
			if start != l4Start || (off != 6 && off != 16) || start+off+2 > len(got) {
				return fmt.Errorf("partial checksum at start %d offset %d", start, off)
			}
			if p.phase == "plain" {
				return errors.New("a frame sent with its checksum complete came back partial")
			}
			binary.BigEndian.PutUint16(got[start+off:], 0)
			c := ^fold(sum(got[start:]) + uint32(binary.BigEndian.Uint16(pkt[start+off:])))
			if c == 0 && p.phase == "csum" {
				c = 0xffff
			}
			binary.BigEndian.PutUint16(got[start+off:], c)
			st.csumPartial++
		case p.phase != "plain":
			st.csumComplete++
		}
	}
	if i := firstDiff(got[12:], p.want[12:]); i >= 0 {
		return fmt.Errorf("byte %d differs: got %#02x, want %#02x (flags %v)", 12+i, got[12+i], p.want[12+i], hdr)
	}
	return nil
}

func firstDiff(a, b []byte) int {
	for i := range a {
		if a[i] != b[i] {
			return i
		}
	}
	return -1
}

func htons(v uint16) uint16 { return v<<8 | v>>8 }

// virtioFeatures is the feature bitmap the guest driver negotiated, from
// sysfs (one '0'/'1' per bit, bit 0 first), in hex.
func virtioFeatures() string {
	ms, _ := os.ReadDir("/sys/bus/virtio/devices")
	for _, m := range ms {
		b, err := os.ReadFile("/sys/bus/virtio/devices/" + m.Name() + "/features")
		if err != nil {
			continue
		}
		var v uint64
		for i, c := range strings.TrimSpace(string(b)) {
			if c == '1' && i < 64 {
				v |= 1 << i
			}
		}
		return fmt.Sprintf("%#x", v)
	}
	return "unknown"
}
