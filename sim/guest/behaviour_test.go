package guest_test

import (
	"context"
	"encoding/binary"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

func TestBrokenQueueIsIsolated(t *testing.T) {
	b := startBackend(t, vhost.Config{QueuePairs: 2})
	g := dial(t, b, guest.Options{QueuePairs: 2})
	for p := range 2 {
		if err := g.PostRx(p, 32); err != nil {
			t.Fatal(err)
		}
	}
	// Pair 1's TX ring gets a descriptor pointing past the memory table.
	tx1 := g.Ring(3)
	b.loop.Poll() // pair 1 runs before the bad chain arrives
	if _, err := tx1.Add([]guest.Buf{{GPA: g.Mem.End() + 0x1000, Len: 100}}, false); err != nil {
		t.Fatal(err)
	}
	tx1.Publish()
	b.loop.Poll()
	b.loop.Poll()
	st, err := g.FE.U64(vhost.ReqGetStatus)
	if err != nil {
		t.Fatalf("back end unreachable after a bad descriptor: %v", err)
	}
	if st&vhost.StatusNeedsReset == 0 {
		t.Fatalf("status %#x lacks NEEDS_RESET", st)
	}
	if !g.ErrSignalled(3) {
		t.Fatal("broken ring's error eventfd was not signalled")
	}
	if g.ErrSignalled(1) {
		t.Fatal("healthy ring's error eventfd was signalled")
	}
	// Pair 0 is unaffected.
	roundTrip(t, b, g, 0, sizes(20, 60, 1514))
	// The guest resets: status 0, stop the broken ring, set it up afresh.
	if _, err := g.FE.Request(vhost.ReqSetStatus, vhost.EncodeU64(0)); err != nil {
		t.Fatal(err)
	}
	if err := g.ResetQueue(3); err != nil {
		t.Fatal(err)
	}
	if st := b.dev.Status(); st&vhost.StatusNeedsReset != 0 {
		t.Fatalf("status %#x still NEEDS_RESET after the reset", st)
	}
	roundTrip(t, b, g, 1, sizes(20, 60, 1514))
}

func TestFrontendReconnectResumesRings(t *testing.T) {
	b := startBackend(t, vhost.Config{})
	g := dial(t, b, guest.Options{})
	if err := g.PostRx(0, 64); err != nil {
		t.Fatal(err)
	}
	roundTrip(t, b, g, 0, sizes(10, 60, 1514))
	reconnect(t, b, g)
	// Rings resume at used->idx; posted RX buffers are still there.
	roundTrip(t, b, g, 0, sizes(30, 60, 1514, 3000))
}

// TestClientModeReconnects runs the back end as the client of a front end
// that listens (QEMU server=on), restarts it, and checks the back end
// comes back to the new instance by itself.
func TestClientModeReconnects(t *testing.T) {
	path := filepath.Join(t.TempDir(), "fe.sock")
	dev, err := vhost.NewDevice(vhost.Config{Logger: logger(t)})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = vhost.DialAndServe(ctx, path, dev, vhost.Backoff{Min: time.Millisecond, Max: 20 * time.Millisecond})
	}()
	defer func() { cancel(); wg.Wait() }()
	b := &backend{dev: dev, loop: vhosttest.NewLoopback(dev), path: path}

	for instance := range 2 {
		time.Sleep(30 * time.Millisecond) // the back end is retrying meanwhile
		l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		l.SetDeadline(time.Now().Add(5 * time.Second))
		uc, err := l.AcceptUnix()
		if err != nil {
			t.Fatalf("instance %d: back end did not connect: %v", instance, err)
		}
		g, err := guest.New(guest.Options{})
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Attach(uc); err != nil {
			t.Fatal(err)
		}
		if err := g.PostRx(0, 64); err != nil {
			t.Fatal(err)
		}
		roundTrip(t, b, g, 0, sizes(10, 60, 1514))
		g.Close() // the front end "crashes"
		l.Close()
	}
}

func TestControlQueue(t *testing.T) {
	b := startBackend(t, vhost.Config{QueuePairs: 2})
	g := dial(t, b, guest.Options{QueuePairs: 2, CtrlQueue: true})
	poll := func() { b.loop.Poll() }
	mac := []byte{0x02, 0, 0, 0xaa, 0xbb, 0xcc}
	cmds := []struct {
		class, cmd byte
		data       []byte
		want       byte
	}{
		{1, 1, mac, vhost.CtrlOK},              // MAC_ADDR_SET
		{0, 0, []byte{1}, vhost.CtrlOK},        // RX_PROMISC on
		{0, 1, []byte{1}, vhost.CtrlOK},        // RX_ALLMULTI on
		{1, 0, make([]byte, 8), vhost.CtrlOK},  // MAC_TABLE_SET, two empty tables
		{1, 0, make([]byte, 7), vhost.CtrlErr}, // malformed tables
		{4, 0, []byte{3, 0}, vhost.CtrlErr},    // VQ_PAIRS_SET beyond the device
		{4, 0, []byte{0, 0}, vhost.CtrlErr},    // zero pairs
		{9, 0, nil, vhost.CtrlErr},             // unknown class
		{0, 0, []byte{1, 2}, vhost.CtrlErr},    // wrong length
	}
	for _, c := range cmds {
		ack, err := g.Control(c.class, c.cmd, c.data, poll)
		if err != nil {
			t.Fatal(err)
		}
		if ack != c.want {
			t.Errorf("class %d cmd %d: ack %d, want %d", c.class, c.cmd, ack, c.want)
		}
	}
	st := b.dev.Ctrl()
	if string(st.MAC[:]) != string(mac) || !st.Promisc || !st.Allmulti || st.ActivePairs != 1 {
		t.Fatalf("control state %+v", st)
	}
	// Only pair 0 carries traffic until the driver activates pair 1.
	for p := range 2 {
		if err := g.PostRx(p, 16); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.Transmit(1, vhost.NetHeader{}, frame(0, 60)); err != nil {
		t.Fatal(err)
	}
	b.loop.Poll()
	if pk, _ := g.Receive(1); len(pk) != 0 {
		t.Fatal("inactive queue pair carried traffic")
	}
	if ack, err := g.Control(4, 0, []byte{2, 0}, poll); err != nil || ack != vhost.CtrlOK {
		t.Fatalf("VQ_PAIRS_SET 2: %d %v", ack, err)
	}
	var got []guest.Packet
	for range 10 {
		pump(t, b, g, 1, &got)
	}
	if len(got) != 1 {
		t.Fatalf("pair 1 delivered %d frames after activation", len(got))
	}
}

// TestControlQueueFixedMAC: a device whose MAC the guest may not change
// refuses MAC_ADDR_SET to another address (and keeps its MAC), and
// accepts setting the configured one.
func TestControlQueueFixedMAC(t *testing.T) {
	mine := []byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}
	b := startBackend(t, vhost.Config{MAC: mine, FixedMAC: true})
	g := dial(t, b, guest.Options{CtrlQueue: true})
	poll := func() { b.loop.Poll() }
	if ack, err := g.Control(1, 1, []byte{0x02, 0, 0, 0xaa, 0xbb, 0xcc}, poll); err != nil || ack != vhost.CtrlErr {
		t.Fatalf("MAC_ADDR_SET to another MAC: ack %d (%v), want refused", ack, err)
	}
	if st := b.dev.Ctrl(); string(st.MAC[:]) != string(mine) {
		t.Fatalf("refused MAC_ADDR_SET changed the MAC: %+v", st)
	}
	if ack, err := g.Control(1, 1, mine, poll); err != nil || ack != vhost.CtrlOK {
		t.Fatalf("MAC_ADDR_SET to the configured MAC: ack %d (%v), want OK", ack, err)
	}
}

func TestCallSuppression(t *testing.T) {
	t.Run("event-idx", func(t *testing.T) {
		b := startBackend(t, vhost.Config{})
		g := dial(t, b, guest.Options{})
		rx := g.Ring(0)
		if err := g.PostRx(0, 64); err != nil {
			t.Fatal(err)
		}
		g.Calls(0)
		// The driver asks to hear only after 1000 more used entries.
		rx.SetUsedEvent(rx.LastUsed() + 1000)
		for i := range 5 {
			g.Transmit(0, vhost.NetHeader{}, frame(i, 60))
		}
		b.loop.Poll()
		if n := g.Calls(0); n != 0 {
			t.Fatalf("%d calls although used_event is far ahead", n)
		}
		// Now it wants a call at the next used entry.
		pk, _ := g.Receive(0)
		rx.SetUsedEvent(rx.LastUsed())
		for i := range 5 {
			g.Transmit(0, vhost.NetHeader{}, frame(i, 60))
		}
		b.loop.Poll()
		if n := g.Calls(0); n != 1 {
			t.Fatalf("%d calls for one burst, want exactly 1 (received %d before)", n, len(pk))
		}
	})
	t.Run("no-interrupt-flag", func(t *testing.T) {
		b := startBackend(t, vhost.Config{})
		g := dial(t, b, guest.Options{Features: guest.DefaultWanted &^ vhost.FEventIdx})
		rx := g.Ring(0)
		if rx.UsedFlags()&1 == 0 {
			t.Fatal("back end without EVENT_IDX does not set VRING_USED_F_NO_NOTIFY")
		}
		checkNoInterrupt(t, b, g)
	})
}

// udpFrame is an Ethernet/IPv4/UDP frame whose UDP checksum field holds
// the pseudo-header sum, as a driver leaves it with NEEDS_CSUM.
func udpFrame(payload int) []byte {
	f := frame(0, 14+20+8+payload)
	f[12], f[13] = 0x08, 0x00
	ip := f[14:34]
	ip[0], ip[9] = 0x45, 17
	binary.BigEndian.PutUint16(ip[2:], uint16(20+8+payload))
	copy(ip[12:16], []byte{10, 0, 0, 1})
	copy(ip[16:20], []byte{10, 0, 0, 2})
	udp := f[34:]
	binary.BigEndian.PutUint16(udp[0:], 1234)
	binary.BigEndian.PutUint16(udp[2:], 5678)
	binary.BigEndian.PutUint16(udp[4:], uint16(8+payload))
	binary.BigEndian.PutUint16(udp[6:], fold(pseudoSum(f)))
	return f
}

func pseudoSum(f []byte) uint32 {
	var s uint32
	for i := 26; i < 34; i += 2 {
		s += uint32(binary.BigEndian.Uint16(f[i:]))
	}
	return s + 17 + uint32(len(f)-34)
}

func fold(s uint32) uint16 {
	for s>>16 != 0 {
		s = s&0xffff + s>>16
	}
	return uint16(s)
}

func TestChecksumOffload(t *testing.T) {
	hdr := vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 6}
	t.Run("device-finishes", func(t *testing.T) {
		b := startBackend(t, vhost.Config{})
		g := dial(t, b, guest.Options{Features: guest.DefaultWanted &^ (vhost.NetFGuestCsum | vhost.NetFGuestTSO4 | vhost.NetFGuestTSO6)})
		g.PostRx(0, 8)
		f := udpFrame(333) // odd length on purpose
		if err := g.Transmit(0, hdr, f); err != nil {
			t.Fatal(err)
		}
		b.loop.Poll()
		pk, err := g.Receive(0)
		if err != nil || len(pk) != 1 {
			t.Fatal(pk, err)
		}
		if pk[0].Hdr.Flags&vhost.NetHdrFNeedsCsum != 0 {
			t.Fatal("NEEDS_CSUM delivered to a guest without GUEST_CSUM")
		}
		r := pk[0].Frame
		// Verify: pseudo header + UDP segment sums to 0xffff.
		var s uint32 = uint32(fold(pseudoSum(r)))
		seg := r[34:]
		for i := 0; i+1 < len(seg); i += 2 {
			s += uint32(binary.BigEndian.Uint16(seg[i:]))
		}
		if len(seg)%2 == 1 {
			s += uint32(seg[len(seg)-1]) << 8
		}
		if fold(s) != 0xffff {
			t.Fatalf("UDP checksum %#04x does not verify (sum %#x)", binary.BigEndian.Uint16(seg[6:]), fold(s))
		}
	})
	t.Run("passed-through", func(t *testing.T) {
		b := startBackend(t, vhost.Config{})
		g := dial(t, b, guest.Options{})
		g.PostRx(0, 8)
		f := udpFrame(100)
		gso := vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, GSOType: vhost.NetHdrGSOTCPv4, HdrLen: 54, GSOSize: 1448, CsumStart: 34, CsumOffset: 16}
		for _, h := range []vhost.NetHeader{hdr, gso} {
			if err := g.Transmit(0, h, f); err != nil {
				t.Fatal(err)
			}
			b.loop.Poll()
			pk, err := g.Receive(0)
			if err != nil || len(pk) != 1 {
				t.Fatal(pk, err)
			}
			h.NumBuffers = 1
			if pk[0].Hdr != h {
				t.Fatalf("header %+v came back as %+v", h, pk[0].Hdr)
			}
			if string(pk[0].Frame[12:]) != string(f[12:]) {
				t.Fatal("frame changed although the guest finishes checksums")
			}
		}
	})
}

func TestPackedCallsAndReconnect(t *testing.T) {
	b := startBackend(t, vhost.Config{Features: vhost.DefaultFeatures | vhost.FRingPacked})
	g := dial(t, b, guest.Options{Features: guest.DefaultWanted | vhost.FRingPacked, QueueSize: 32})
	checkNoInterrupt(t, b, g)
	var got []guest.Packet
	pump(t, b, g, 0, &got)
	roundTrip(t, b, g, 0, sizes(70, 60, 1514, 3000))

	// Reconnect: the device resumes at the driver's position (wrap
	// counters included) and the posted buffers are still there.
	reconnect(t, b, g)
	roundTrip(t, b, g, 0, sizes(70, 60, 1514))
	base, err := g.StopRing(1)
	if err != nil {
		t.Fatal(err)
	}
	if want := g.Ring(1).Restart(); base != want {
		t.Fatalf("GET_VRING_BASE %#x, driver position %#x", base, want)
	}
}

// reconnect drops the guest's connection and sets the device up again on a
// new one, keeping guest memory and rings (QEMU's reconnect).
func reconnect(t *testing.T, b *backend, g *guest.Guest) {
	t.Helper()
	if err := g.Disconnect(); err != nil {
		t.Fatal(err)
	}
	for range 500 {
		if !b.dev.Connected() {
			break
		}
		time.Sleep(2 * time.Millisecond)
	}
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: b.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	if err := g.Attach(uc); err != nil {
		t.Fatal(err)
	}
}

// checkNoInterrupt: with the driver's "no interrupt" request (split
// VRING_AVAIL_F_NO_INTERRUPT, packed driver event flags DISABLE) the device
// never calls; without it, it calls exactly once per burst.
func checkNoInterrupt(t *testing.T, b *backend, g *guest.Guest) {
	t.Helper()
	rx := g.Ring(0)
	if err := g.PostRx(0, 32); err != nil {
		t.Fatal(err)
	}
	g.Calls(0)
	rx.SetNoInterrupt(true)
	g.Transmit(0, vhost.NetHeader{}, frame(0, 60))
	b.loop.Poll()
	if n := g.Calls(0); n != 0 {
		t.Fatalf("%d calls with driver notifications disabled", n)
	}
	rx.SetNoInterrupt(false)
	for i := range 4 {
		g.Transmit(0, vhost.NetHeader{}, frame(i, 60))
	}
	b.loop.Poll()
	if n := g.Calls(0); n != 1 {
		t.Fatalf("%d calls for one burst, want 1", n)
	}
}
