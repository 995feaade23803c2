//go:build linux

package wire

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/internal/checksum"
)

// The addresses of the test's private network, which exists only inside a
// network namespace the test creates: the kernel's side of the TAP and the
// responder the test puts on the simulated side.
var (
	tapKernelIP    = [4]byte{10, 77, 0, 1}
	tapResponderIP = [4]byte{10, 77, 0, 2}
	responderMAC   = MAC{0x02, 0x7a, 0x63, 0x00, 0x00, 0x02}
)

// responder is a minimal host on the simulated side of the TAP: it answers
// ARP requests and ICMP echo requests for its address and hands UDP
// datagrams for it to a channel.
type responder struct {
	mac   MAC
	ip    [4]byte
	reply Endpoint

	arpReplies, echoReplies atomic.Int64
	shortest                atomic.Int64        // length of the shortest frame delivered
	dirtyPad                atomic.Int64        // ARP frames with non-zero bytes after the message
	peerMAC                 atomic.Pointer[MAC] // learnt from ARP requests
	udp                     chan UDP4           // copies, payload included

	mu  sync.Mutex // guards out
	out [1600]byte
}

func (r *responder) Deliver(f []byte) {
	if n := int64(len(f)); r.shortest.Load() == 0 || n < r.shortest.Load() {
		r.shortest.Store(n)
	}
	if len(f) < EthernetHeaderLen {
		return
	}
	switch binary.BigEndian.Uint16(f[12:]) {
	case EtherTypeARP:
		r.arp(f)
	case EtherTypeIPv4:
		r.ipv4(f)
	}
}

// arp answers "who has r.ip" (RFC 826): Ethernet/IPv4 ARP, operation 1.
func (r *responder) arp(f []byte) {
	a := f[EthernetHeaderLen:]
	if len(a) < 28 || binary.BigEndian.Uint16(a[0:]) != 1 || binary.BigEndian.Uint16(a[2:]) != EtherTypeIPv4 ||
		a[4] != 6 || a[5] != 4 || binary.BigEndian.Uint16(a[6:]) != 1 || !bytes.Equal(a[24:28], r.ip[:]) {
		return
	}
	for _, b := range a[28:] {
		if b != 0 {
			r.dirtyPad.Add(1)
			break
		}
	}
	var sha MAC
	copy(sha[:], a[8:14])
	r.peerMAC.Store(&sha)

	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.out[:60] // minimum frame; bytes after the ARP message are padding
	clear(out)
	copy(out[0:6], sha[:])
	copy(out[6:12], r.mac[:])
	binary.BigEndian.PutUint16(out[12:], EtherTypeARP)
	o := out[EthernetHeaderLen:]
	binary.BigEndian.PutUint16(o[0:], 1) // hardware type Ethernet
	binary.BigEndian.PutUint16(o[2:], EtherTypeIPv4)
	o[4], o[5] = 6, 4
	binary.BigEndian.PutUint16(o[6:], 2) // reply
	copy(o[8:14], r.mac[:])
	copy(o[14:18], r.ip[:])
	copy(o[18:24], a[8:14])  // target hardware address: the asker's
	copy(o[24:28], a[14:18]) // target protocol address: the asker's
	// Count before delivering: once the reply is in the TAP the kernel may
	// act on it (and the test read the counter) before Deliver returns.
	r.arpReplies.Add(1)
	r.reply.Deliver(out)
}

func (r *responder) ipv4(f []byte) {
	ip := f[EthernetHeaderLen:]
	if len(ip) < IPv4HeaderLen || ip[0]>>4 != 4 || !bytes.Equal(ip[16:20], r.ip[:]) {
		return
	}
	switch ip[9] {
	case IPProtoUDP:
		p, err := ParseUDP4(f)
		if err == nil {
			p.Payload = append([]byte(nil), p.Payload...)
			select {
			case r.udp <- p:
			default:
			}
		}
	case IPProtoICMP:
		r.echo(f)
	}
}

// echo answers an ICMP echo request (RFC 792, type 8) with an echo reply
// (type 0) carrying the same identifier, sequence number and data.
func (r *responder) echo(f []byte) {
	ip := f[EthernetHeaderLen:]
	ihl := int(ip[0]&0x0f) * 4
	total := int(binary.BigEndian.Uint16(ip[2:]))
	if ihl < IPv4HeaderLen || total > len(ip) || total < ihl+8 || len(f) > len(r.out) {
		return
	}
	icmp := ip[ihl:total]
	if icmp[0] != 8 || icmp[1] != 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.out[:EthernetHeaderLen+IPv4HeaderLen+len(icmp)]
	copy(out[0:6], f[6:12])
	copy(out[6:12], r.mac[:])
	binary.BigEndian.PutUint16(out[12:], EtherTypeIPv4)
	oip := out[EthernetHeaderLen:]
	oip[0], oip[1] = 0x45, 0
	binary.BigEndian.PutUint16(oip[2:], uint16(IPv4HeaderLen+len(icmp)))
	copy(oip[4:6], ip[4:6]) // echo the identification
	binary.BigEndian.PutUint16(oip[6:], 0)
	oip[8], oip[9] = 64, IPProtoICMP
	binary.BigEndian.PutUint16(oip[10:], 0)
	copy(oip[12:16], r.ip[:])
	copy(oip[16:20], ip[12:16])
	binary.BigEndian.PutUint16(oip[10:], checksum.Finish(checksum.Add(0, oip[:IPv4HeaderLen])))
	oicmp := oip[IPv4HeaderLen:]
	copy(oicmp, icmp)
	oicmp[0] = 0 // echo reply
	binary.BigEndian.PutUint16(oicmp[2:], 0)
	binary.BigEndian.PutUint16(oicmp[2:], checksum.Finish(checksum.Add(0, oicmp)))
	// Counted first for the same reason as in arp.
	r.echoReplies.Add(1)
	r.reply.Deliver(out)
}

// requireCommand finds a program the test depends on or fails naming the
// Debian package that provides it.
func requireCommand(t *testing.T, name, pkg string) string {
	t.Helper()
	path, err := exec.LookPath(name)
	if err != nil {
		t.Fatalf("%s not found: install Debian's %s package (apt-get install %s)", name, pkg, pkg)
	}
	return path
}

func runCommand(t *testing.T, name string, args ...string) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, name, args...).CombinedOutput()
	if err != nil {
		t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

// inNetns runs fn on an OS thread that has entered the named network
// namespace; sockets fn creates belong to that namespace for good. The
// thread is put back into its own namespace afterwards, or, if that fails,
// left locked so that the runtime discards it instead of reusing it.
func inNetns(ns string, fn func() error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		restored := false
		defer func() {
			if restored {
				runtime.UnlockOSThread()
			}
		}()
		self, err := os.Open("/proc/thread-self/ns/net")
		if err != nil {
			restored = true
			errc <- err
			return
		}
		defer self.Close()
		target, err := os.Open("/var/run/netns/" + ns)
		if err != nil {
			restored = true
			errc <- err
			return
		}
		defer target.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			restored = true
			errc <- fmt.Errorf("entering netns %s: %w", ns, err)
			return
		}
		ferr := fn()
		if err := unix.Setns(int(self.Fd()), unix.CLONE_NEWNET); err == nil {
			restored = true
		} else if ferr == nil {
			ferr = fmt.Errorf("leaving netns %s: %w", ns, err)
		}
		errc <- ferr
	}()
	return <-errc
}

// setupTAPNetns creates a TAP, moves it into a new network namespace and
// gives the kernel's side 10.77.0.1/24. Everything is removed on cleanup.
func setupTAPNetns(t *testing.T) (tap *TAP, ns string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Fatal("the TAP test needs root (CAP_NET_ADMIN and CAP_SYS_ADMIN) to create a TAP interface and a network namespace")
	}
	ip := requireCommand(t, "ip", "iproute2")
	ns = fmt.Sprintf("zcnet-wire-%d", os.Getpid())
	runCommand(t, ip, "netns", "add", ns)
	t.Cleanup(func() {
		if out, err := exec.Command(ip, "netns", "del", ns).CombinedOutput(); err != nil {
			t.Errorf("removing netns %s: %v\n%s", ns, err, out)
		}
	})
	tap, err := OpenTAP(fmt.Sprintf("zcw%d", os.Getpid()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := tap.Close(); err != nil {
			t.Error(err)
		}
	})
	runCommand(t, ip, "link", "set", tap.Name(), "netns", ns)
	runCommand(t, ip, "-n", ns, "addr", "add", netip.AddrFrom4(tapKernelIP).String()+"/24", "dev", tap.Name())
	runCommand(t, ip, "-n", ns, "link", "set", tap.Name(), "up")
	return tap, ns
}

func TestTAPPingAndUDP(t *testing.T) {
	ping := requireCommand(t, "ping", "iputils-ping")
	ip := requireCommand(t, "ip", "iproute2")
	tap, ns := setupTAPNetns(t)
	// Let ping use an ICMP datagram socket, whose replies pass the
	// kernel's ICMP checksum check; with a raw socket ping would accept a
	// reply with a wrong checksum. The setting belongs to the namespace.
	runCommand(t, ip, "netns", "exec", ns, "sh", "-c", "echo 0 2147483647 > /proc/sys/net/ipv4/ping_group_range")
	r := &responder{mac: responderMAC, ip: tapResponderIP, reply: tap, udp: make(chan UDP4, 16)}
	tap.Attach(r)

	// The kernel resolves 10.77.0.2 by ARP and pings it; the responder on
	// the simulated side answers both.
	out := runCommand(t, ip, "netns", "exec", ns, ping, "-n", "-c", "3", "-i", "0.2", "-W", "1", netip.AddrFrom4(tapResponderIP).String())
	if !strings.Contains(out, " 3 received") {
		t.Errorf("ping did not get 3 replies:\n%s", out)
	}
	if r.arpReplies.Load() < 1 || r.echoReplies.Load() < 3 {
		t.Errorf("responder sent %d ARP and %d echo replies, want at least 1 and 3", r.arpReplies.Load(), r.echoReplies.Load())
	}
	// The kernel wrote its ARP request as 42 bytes; the endpoint must see
	// it padded with zeros to the Ethernet minimum, as a NIC would.
	if n := r.shortest.Load(); n != 60 || r.dirtyPad.Load() != 0 || tap.Stats().RxPadded < 1 {
		t.Errorf("shortest frame delivered %d bytes (want 60), %d ARP frames padded with non-zero bytes, RxPadded %d",
			n, r.dirtyPad.Load(), tap.Stats().RxPadded)
	}

	// A datagram from a kernel socket arrives at the Endpoint, with a UDP
	// checksum the kernel computed.
	var conn *net.UDPConn
	err := inNetns(ns, func() error {
		var err error
		conn, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.IP(tapKernelIP[:])})
		return err
	})
	if err != nil {
		t.Fatalf("UDP socket in netns %s: %v", ns, err)
	}
	defer conn.Close()
	msg := []byte("hello from the kernel's UDP stack")
	if _, err := conn.WriteToUDP(msg, &net.UDPAddr{IP: net.IP(tapResponderIP[:]), Port: 7007}); err != nil {
		t.Fatal(err)
	}
	select {
	case p := <-r.udp:
		local := conn.LocalAddr().(*net.UDPAddr)
		if !bytes.Equal(p.Payload, msg) || p.DstPort != 7007 || int(p.SrcPort) != local.Port || p.SrcIP != tapKernelIP {
			t.Errorf("datagram at the endpoint: %+v", p)
		}
		if !p.IPChecksumOK || !p.UDPChecksumOK || !p.UDPChecksumPresent {
			t.Errorf("kernel's datagram fails our checks: ip %v udp %v present %v", p.IPChecksumOK, p.UDPChecksumOK, p.UDPChecksumPresent)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the kernel's UDP datagram never reached the endpoint")
	}

	// The other way: generator frames delivered into the TAP reach the
	// kernel socket, which checks the UDP checksum and drops a bad one.
	peer := r.peerMAC.Load()
	if peer == nil {
		t.Fatal("no ARP request seen, so the kernel side's MAC is unknown")
	}
	local := conn.LocalAddr().(*net.UDPAddr)
	var c capture
	g := newGenerator(t, GeneratorConfig{
		SrcMAC: responderMAC, DstMAC: *peer,
		SrcIP: netip.AddrFrom4(tapResponderIP), DstIP: netip.AddrFrom4(tapKernelIP),
		SrcPort: 7008, DstPort: uint16(local.Port), FrameSize: 200,
	}, Tee{&c, tap})
	g.Emit(3)
	bad := append([]byte(nil), c.all()[2]...)
	bad[len(bad)-1] ^= 1 // breaks the UDP checksum only
	g.Emit(1)            // seq 3
	tap.Deliver(bad)     // seq 2 again, corrupted: the kernel must drop it
	g.Emit(1)            // seq 4

	buf := make([]byte, 2048)
	var got []uint64
	for len(got) < 5 {
		if err := conn.SetReadDeadline(time.Now().Add(5 * time.Second)); err != nil {
			t.Fatal(err)
		}
		n, from, err := conn.ReadFromUDP(buf)
		if err != nil {
			t.Fatalf("after %d datagrams from the generator: %v", len(got), err)
		}
		if from.Port != 7008 || n != 200-FCSLen-42 {
			t.Errorf("datagram from %v, %d bytes", from, n)
		}
		seq, _, ok := parseProbe(buf[:n])
		if !ok {
			t.Fatalf("datagram without a probe: % x", buf[:n])
		}
		got = append(got, seq)
	}
	if fmt.Sprint(got) != "[0 1 2 3 4]" {
		t.Errorf("kernel received sequence %v, want [0 1 2 3 4] (the corrupted copy of 2 dropped)", got)
	}
	// Written into the kernel: 6 frames here plus the responder's replies,
	// which the kernel may still be provoking (ARP reachability probes).
	// A reply is counted just before it is written, under the responder's
	// lock, so at most one counted reply is not yet written.
	replies := func() uint64 { return uint64(r.arpReplies.Load() + r.echoReplies.Load()) }
	before := replies()
	st := tap.Stats()
	after := replies()
	if st.TxFrames+1 < 6+before || st.TxFrames > 6+after || st.TxErrors != 0 || st.RxFrames < 5 {
		t.Errorf("TAP stats %+v: want 6 + %d..%d frames written without error, at least 5 read", st, before-1, after)
	}
}

// TestPadFrame: the read buffer still holds the previous, longer frame;
// padding must not leak its bytes into the short one.
func TestPadFrame(t *testing.T) {
	buf := bytes.Repeat([]byte{0xAA}, 128)
	if n := padFrame(buf, 42); n != 60 {
		t.Fatalf("padded to %d bytes, want 60", n)
	}
	if !bytes.Equal(buf[:42], bytes.Repeat([]byte{0xAA}, 42)) || !bytes.Equal(buf[42:60], make([]byte, 18)) || buf[60] != 0xAA {
		t.Errorf("padded frame % x", buf[:61])
	}
}

func TestOpenTAPErrors(t *testing.T) {
	if _, err := OpenTAP("a-name-far-too-long-for-linux"); err == nil {
		t.Error("a 29-byte interface name was accepted")
	}
}
