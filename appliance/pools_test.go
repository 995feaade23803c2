package appliance

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zcnet/zcnet/internal/testwait"
	simguest "github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vhost"
)

// guestMAC is the configured MAC of guest i in the pool tests.
func guestMAC(i int) [6]byte { return [6]byte{0x52, 0x54, 0, 0xab, 0xcd, byte(0x10 + i)} }

// TestGuestsShareANICPort serves four guests with their own MACs on one
// simulated 82599 port: three echo what they receive, the fourth only
// receives. Each unicast frame reaches its guest only; a broadcast
// reaches all four once; a guest's echo of a broadcast (sent from the
// broadcast address, not its own) is dropped by the NIC's anti-spoofing
// and counted; a frame one guest sends to another is switched inside the
// NIC and never reaches the wire. All zero-copy; no IOMMU fault (checked
// by newSimNICs).
func TestGuestsShareANICPort(t *testing.T) {
	nics := newSimNICs(t)
	dir := t.TempDir()
	spec := testSpec(t, "sim:0")
	spec.NICs[0].MaxGuests = 4
	var socks [4]string
	for i := range socks {
		socks[i] = filepath.Join(dir, fmt.Sprintf("vm%d.sock", i))
		m := guestMAC(i)
		spec.NICs[0].Guests = append(spec.NICs[0].Guests, GuestSpec{Socket: socks[i], MAC: net.HardwareAddr(m[:]).String()})
	}
	a := openTest(t, spec, nics)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := nics.nics["sim:0"]
	var echoes [3]*simguest.Echo
	for i := range echoes {
		echoes[i] = startEcho(t, a, socks[i])
		defer echoes[i].Close()
	}
	quiet, err := simguest.Dial(socks[3], simguest.EchoOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer quiet.Close()
	if err := quiet.RefillRx(0, 256); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the receiving guest's buffers on the NIC", func() bool {
		gi, _, err := a.Guest(socks[3])
		return err == nil && gi.Ready
	})
	var got []simguest.RxFrame
	receive := func() int {
		f, err := quiet.ReceiveInPlace(0, make([]simguest.RxFrame, 0, 64))
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, f...)
		return len(f)
	}

	// Unicast: each echoing guest gets exactly its own frames.
	for i := range echoes {
		echo(t, n, guestMAC(i), 1) // its buffers are on the NIC, stragglers landed
	}
	var before [3]uint64
	for i, e := range echoes {
		before[i] = e.Received()
	}
	for i := range echoes {
		if err := tryEcho(n, guestMAC(i), 10*(i+1), false, 10*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	for i, e := range echoes {
		if d := e.Received() - before[i]; d != uint64(10*(i+1)) {
			t.Errorf("guest %d received %d unicast frames, want its %d", i, d, 10*(i+1))
		}
	}
	if k := receive(); k != 0 {
		t.Fatalf("the fourth guest received %d frames addressed to the others", k)
	}

	// Broadcast: once to every guest; the echoes are spoofed.
	for i, e := range echoes {
		before[i] = e.Received()
	}
	sunk := n.sink.Stats().Frames
	spoofed := a.Snapshot("test").NICs[0].TxSpoofed
	bcast, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, FrameSize: 256}, n.pf)
	if err != nil {
		t.Fatal(err)
	}
	bcast.Emit(5)
	testwait.For(t, "the broadcasts at every guest", func() bool {
		receive()
		for i, e := range echoes {
			if e.Received()-before[i] < 5 {
				return false
			}
		}
		return len(got) >= 5
	})
	testwait.For(t, "the NIC to drop the 15 spoofed echoes", func() bool {
		return a.Snapshot("test").NICs[0].TxSpoofed-spoofed >= 15
	})
	time.Sleep(50 * time.Millisecond)
	receive()
	for i, e := range echoes {
		if d := e.Received() - before[i]; d != 5 {
			t.Errorf("guest %d received %d of 5 broadcasts", i, d)
		}
	}
	if len(got) != 5 {
		t.Errorf("the fourth guest received %d of 5 broadcasts", len(got))
	}
	if d := a.Snapshot("test").NICs[0].TxSpoofed - spoofed; d != 15 {
		t.Errorf("NIC counted %d spoofed frames, want the 15 echoes sent from the broadcast address", d)
	}
	if d := n.sink.Stats().Frames - sunk; d != 0 {
		t.Errorf("%d frames reached the wire; the echoes of broadcasts are spoofed and must not", d)
	}
	got = got[:0]

	// Guest to guest: a frame from "guest 3" to guest 0 comes back, swapped,
	// addressed to guest 3: the NIC delivers it inside, not on the wire.
	sunk = n.sink.Stats().Frames
	peer, err := wire.NewGenerator(wire.GeneratorConfig{SrcMAC: wire.MAC(guestMAC(3)), DstMAC: wire.MAC(guestMAC(0)), FrameSize: 256}, n.pf)
	if err != nil {
		t.Fatal(err)
	}
	peer.Emit(3)
	testwait.For(t, "guest 0's replies at guest 3", func() bool { receive(); return len(got) >= 3 })
	m0, m3 := guestMAC(0), guestMAC(3)
	for i, f := range got {
		if len(f.Frame) != 256-4 || !bytes.Equal(f.Frame[0:6], m3[:]) || !bytes.Equal(f.Frame[6:12], m0[:]) {
			t.Errorf("frame %d at guest 3: %d bytes, dst %x src %x; want 252 bytes from guest 0 to guest 3",
				i, len(f.Frame), f.Frame[0:6], f.Frame[6:12])
		}
	}
	if d := n.sink.Stats().Frames - sunk; d != 0 {
		t.Errorf("%d guest-to-guest frames reached the wire", d)
	}
	for _, p := range a.Snapshot("test").Ports {
		if p.Copied.Rx != 0 || p.Copied.Tx != 0 {
			t.Errorf("%s copied %d received and %d sent frames: want all zero-copy", p.Name, p.Copied.Rx, p.Copied.Tx)
		}
	}
}

// TestTrustedGuestMaySendFromAnyAddress: on a shared port the NIC drops
// what an untrusted guest sends from an address not its own, and lets a
// trusted guest's frames through. Both echo broadcasts, so their echoes
// carry the broadcast address as source.
func TestTrustedGuestMaySendFromAnyAddress(t *testing.T) {
	nics := newSimNICs(t)
	dir := t.TempDir()
	spec := testSpec(t, "sim:0")
	spec.NICs[0].MaxGuests = 2
	socks := []string{filepath.Join(dir, "trusted.sock"), filepath.Join(dir, "untrusted.sock")}
	for i, s := range socks {
		m := guestMAC(i)
		spec.NICs[0].Guests = append(spec.NICs[0].Guests, GuestSpec{Socket: s, MAC: net.HardwareAddr(m[:]).String(), Trusted: i == 0})
	}
	a := openTest(t, spec, nics)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := nics.nics["sim:0"]
	for i, s := range socks {
		e := startEcho(t, a, s)
		defer e.Close()
		echo(t, n, guestMAC(i), 1)
	}
	sunk, spoofed := n.sink.Stats().Frames, a.Snapshot("test").NICs[0].TxSpoofed
	bcast, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, FrameSize: 128}, n.pf)
	if err != nil {
		t.Fatal(err)
	}
	bcast.Emit(3)
	testwait.For(t, "3 echoes on the wire and 3 dropped", func() bool {
		return n.sink.Stats().Frames-sunk >= 3 && a.Snapshot("test").NICs[0].TxSpoofed-spoofed >= 3
	})
	time.Sleep(50 * time.Millisecond)
	if d := n.sink.Stats().Frames - sunk; d != 3 {
		t.Errorf("%d echoes reached the wire, want the trusted guest's 3", d)
	}
	if d := a.Snapshot("test").NICs[0].TxSpoofed - spoofed; d != 3 {
		t.Errorf("the NIC dropped %d spoofed frames, want the untrusted guest's 3", d)
	}
}

// TestGuestOnAccessVLAN: a guest on VLAN 100 receives frames tagged 100
// for its MAC untagged, not those tagged 200 or untagged, and what it
// sends leaves tagged 100; the guest beside it, untagged, is unaffected.
func TestGuestOnAccessVLAN(t *testing.T) {
	nics := newSimNICs(t)
	dir := t.TempDir()
	spec := testSpec(t, "sim:0")
	spec.NICs[0].MaxGuests = 2
	sock := filepath.Join(dir, "vlan.sock")
	m := guestMAC(0)
	spec.NICs[0].Guests = []GuestSpec{{Socket: sock, MAC: net.HardwareAddr(m[:]).String(), VLAN: 100}}
	a := openTest(t, spec, nics)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	n := nics.nics["sim:0"]
	rec := &frameLog{}
	n.pf.Attach(rec)
	g, err := simguest.Dial(sock, simguest.EchoOptions)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if err := g.RefillRx(0, 64); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the guest's buffers on the NIC", func() bool {
		gi, _, err := a.Guest(sock)
		return err == nil && gi.Ready && gi.VLAN == 100
	})
	// Untagged payload after the addresses: EtherType 0x88b5 (local
	// experimental) and a pattern.
	payload := make([]byte, 100)
	for i := range payload {
		payload[i] = byte(i)
	}
	frame := func(vid uint16) []byte {
		f := append(append([]byte{}, m[:]...), 0x02, 0, 0, 0, 0, 0x99)
		if vid != 0 {
			f = append(f, 0x81, 0x00, byte(vid>>8), byte(vid))
		}
		return append(append(f, 0x88, 0xb5), payload...)
	}
	var got []simguest.RxFrame
	receive := func() {
		f, err := g.ReceiveInPlace(0, make([]simguest.RxFrame, 0, 16))
		if err != nil {
			t.Fatal(err)
		}
		for _, x := range f {
			got = append(got, simguest.RxFrame{Frame: append([]byte(nil), x.Frame...)})
		}
	}
	// Until the channel has the NIC queue running, frames are dropped:
	// probe with tagged frames until one arrives.
	testwait.For(t, "a frame tagged 100 at the guest", func() bool {
		n.pf.Deliver(frame(100))
		time.Sleep(5 * time.Millisecond)
		receive()
		return len(got) > 0
	})
	time.Sleep(50 * time.Millisecond)
	receive()
	got = got[:0]
	for _, vid := range []uint16{200, 0, 100} {
		n.pf.Deliver(frame(vid))
	}
	testwait.For(t, "the frame tagged 100", func() bool { receive(); return len(got) >= 1 })
	time.Sleep(50 * time.Millisecond)
	receive()
	if len(got) != 1 || !bytes.Equal(got[0].Frame, frame(0)) {
		t.Fatalf("the guest received %d frames (first %x); want only the one tagged 100, untagged", len(got), got)
	}
	// What the guest sends leaves tagged 100.
	out := append(append([]byte{0x02, 0, 0, 0, 0, 0x99}, m[:]...), 0x88, 0xb5)
	out = append(out, payload...)
	if err := g.Transmit(0, vhost.NetHeader{}, out); err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the guest's frame on the wire", func() bool { return len(rec.all()) > 0 })
	w := rec.all()[0]
	if len(w) != len(out)+4 || w[12] != 0x81 || w[13] != 0 || uint16(w[14]&0xf)<<8|uint16(w[15]) != 100 || !bytes.Equal(w[16:], out[12:]) {
		t.Fatalf("on the wire: % x; want the guest's frame tagged 100", w)
	}
}

// frameLog keeps what the NIC transmits.
type frameLog struct {
	mu     sync.Mutex
	frames [][]byte
}

func (l *frameLog) Deliver(f []byte) {
	l.mu.Lock()
	l.frames = append(l.frames, append([]byte(nil), f...))
	l.mu.Unlock()
}

func (l *frameLog) all() [][]byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.frames
}
