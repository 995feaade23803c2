package ixgbe

import (
	"encoding/binary"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim"
)

// toeplitz is the RSS hash, written from Microsoft's RSS specification.
func toeplitz(key []byte, input []byte) uint32 {
	var h uint32
	window := binary.BigEndian.Uint32(key)
	next := 4
	for _, b := range input {
		for bit := 7; bit >= 0; bit-- {
			if b>>bit&1 != 0 {
				h ^= window
			}
			window <<= 1
			if next < len(key) && key[next]>>bit&1 != 0 {
				window |= 1
			}
		}
		next++
	}
	return h
}

func TestToeplitzVector(t *testing.T) {
	// First IPv4/TCP test vector of the Microsoft RSS verification suite:
	// 66.9.149.187:2794 -> 161.142.100.80:1766.
	in := []byte{66, 9, 149, 187, 161, 142, 100, 80, 0x0a, 0xea, 0x06, 0xe6}
	key := DefaultRSSKey()
	if got := toeplitz(key[:], in); got != 0x51ccc178 {
		t.Fatalf("toeplitz = %#x, want 0x51ccc178", got)
	}
}

// rssRig is a port spreading received flows over its RX queues by RSS,
// buffers posted on every queue.
type rssRig struct {
	pf   *sim.PF
	p    *Port
	bufs testBufs
}

func newRSSRig(t *testing.T, queues int) *rssRig {
	pf, p, alloc := simPort(t, Config{RxQueues: queues, TxQueues: 1, RSS: true, RxRingSize: 128})
	r := &rssRig{pf: pf, p: p, bufs: newTestBufs(t, pf, p, alloc, 64*queues, 2048)}
	for i := range queues {
		p.RxQueue(i).Post(r.bufs.rxBufs(t, 63))
	}
	return r
}

// check sends flows UDP flows (source ports 10000 on) and checks that each
// arrives on the queue reta names for its hash, computed here from the
// Toeplitz definition. It returns how many arrived on each queue.
func (r *rssRig) check(t *testing.T, reta [128]uint8, flows int) []int {
	t.Helper()
	key := DefaultRSSKey()
	want := map[uint16]int{} // source port -> queue
	for i := range flows {
		sport := uint16(10000 + i)
		f := udpFrame([6]byte(r.p.MAC()), sport, 53, payloadBytes(20, byte(i)))
		fillChecksums(f)
		r.pf.Deliver(f)
		in := make([]byte, 12)
		copy(in[0:4], testIPSrc[:])
		copy(in[4:8], testIPDst[:])
		binary.BigEndian.PutUint16(in[8:], sport)
		binary.BigEndian.PutUint16(in[10:], 53)
		want[sport] = int(reta[toeplitz(key[:], in)&127])
	}
	per := make([]int, r.p.NumRxQueues())
	buf := make([]ring.RxDone, 64)
	got := 0
	stepUntil(t, r.pf, "all flows received", func() bool {
		for qi := range per {
			q := r.p.RxQueue(qi)
			n := q.Harvest(buf)
			for _, d := range buf[:n] {
				sport := binary.BigEndian.Uint16(r.bufs.Bytes(uint32(d.Cookie))[34:])
				if want[sport] != qi {
					t.Errorf("flow from port %d arrived on queue %d, RETA says %d", sport, qi, want[sport])
				}
				per[qi]++
			}
			// The same buffers go back to the queue they came from.
			r.bufs.Put(cookiesOf(buf[:n]))
			if k := q.Post(r.bufs.rxBufs(t, n)); k != n {
				t.Fatalf("queue %d took back %d of %d buffers", qi, k, n)
			}
			got += n
		}
		return got >= flows
	})
	return per
}

func TestRSSSpreadsFlows(t *testing.T) {
	const queues = 4
	r := newRSSRig(t, queues)
	per := r.check(t, roundRobinRETA(queues), 64)
	for qi, n := range per {
		if n == 0 {
			t.Errorf("queue %d received none of 64 flows: %v", qi, per)
		}
	}
	// Reprogram: everything to queue 2.
	var reta [128]uint8
	for i := range reta {
		reta[i] = 2
	}
	if err := r.p.SetRETA(reta); err != nil {
		t.Fatal(err)
	}
	if per := r.check(t, reta, 16); per[2] != 16 {
		t.Errorf("after SetRETA(all 2): per-queue counts %v", per)
	}
	reta[0] = queues
	if err := r.p.SetRETA(reta); err == nil {
		t.Error("SetRETA accepted a queue the port does not have")
	}
}

// TestRSSHighQueues: with the 16 queues RSS can spread over, flows reach
// queues 4 to 15 as the redirection table says, both the round-robin table
// Open loads and one SetRETA loads with every register's four entries in
// descending order, so that a table packed wrong (entries in the wrong
// byte, queue numbers cut to fewer bits) sends flows elsewhere.
func TestRSSHighQueues(t *testing.T) {
	const queues = maxRSSQueues
	r := newRSSRig(t, queues)
	reversed := [128]uint8{}
	for i := range reversed {
		reversed[i] = uint8(queues - 1 - i%queues)
	}
	for _, tc := range []struct {
		name string
		reta [128]uint8
	}{{"round-robin", roundRobinRETA(queues)}, {"reversed", reversed}} {
		if tc.name != "round-robin" { // that one Open loaded
			if err := r.p.SetRETA(tc.reta); err != nil {
				t.Fatal(err)
			}
		}
		per := r.check(t, tc.reta, 256)
		for qi := 4; qi < queues; qi++ {
			if per[qi] == 0 {
				t.Errorf("%s: queue %d received none of 256 flows: %v", tc.name, qi, per)
			}
		}
	}
}

func cookiesOf(d []ring.RxDone) []uint32 {
	out := make([]uint32, len(d))
	for i := range d {
		out[i] = uint32(d[i].Cookie)
	}
	return out
}

func TestReceiveFilters(t *testing.T) {
	pf, p, alloc := simPort(t, Config{RxRingSize: 128})
	bufs := newTestBufs(t, pf, p, alloc, 256, 2048)
	q := p.RxQueue(0)
	q.Post(bufs.rxBufs(t, 120))
	other := net.HardwareAddr{2, 1, 2, 3, 4, 5}
	group := net.HardwareAddr{0x01, 0x00, 0x5e, 0x00, 0x00, 0xfb}
	otherGroup := net.HardwareAddr{0x01, 0x00, 0x5e, 0x7f, 0x12, 0x34}
	bcast := net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}
	// received reports, for each destination, whether a frame to it is
	// delivered.
	received := func(dsts ...net.HardwareAddr) []bool {
		t.Helper()
		for i, d := range dsts {
			f := udpFrame([6]byte(d), uint16(i), 9, payloadBytes(30, 0))
			fillChecksums(f)
			pf.Deliver(f)
		}
		for range 20 {
			pf.Step()
		}
		buf := make([]ring.RxDone, 64)
		n := q.Harvest(buf)
		out := make([]bool, len(dsts))
		for _, d := range buf[:n] {
			out[binary.BigEndian.Uint16(bufs.Bytes(uint32(d.Cookie))[34:])] = true
		}
		q.Post(bufs.rxBufs(t, n)[:n])
		bufs.Put(cookiesOf(buf[:n]))
		return out
	}
	expect := func(what string, got []bool, want ...bool) {
		t.Helper()
		for i := range want {
			if got[i] != want[i] {
				t.Errorf("%s: delivery %v, want %v", what, got, want)
				return
			}
		}
	}
	expect("defaults (own, other, group, broadcast)", received(p.MAC(), other, group, bcast), true, false, false, true)
	if err := p.AddMAC(other); err != nil {
		t.Fatal(err)
	}
	if err := p.SetMulticast([]net.HardwareAddr{group}); err != nil {
		t.Fatal(err)
	}
	expect("after AddMAC+SetMulticast (own, other, group, other group)", received(p.MAC(), other, group, otherGroup), true, true, true, false)
	if err := p.RemoveMAC(other); err != nil {
		t.Fatal(err)
	}
	p.SetAllMulticast(true)
	expect("after RemoveMAC+allmulti (other, other group)", received(other, otherGroup), false, true)
	p.SetAllMulticast(false)
	p.SetPromiscuous(true)
	expect("promiscuous (other, other group)", received(other, otherGroup), true, true)
	p.SetPromiscuous(false)
	expect("promiscuous off (other)", received(other), false)

	// VLAN filter: tagged frames pass only for added IDs.
	tagged := func(vid uint16) []byte {
		f := udpFrame([6]byte(p.MAC()), 0, 9, payloadBytes(30, 0))
		fillChecksums(f)
		return append(append(append([]byte(nil), f[:12]...), 0x81, 0x00, byte(vid>>8), byte(vid)), f[12:]...)
	}
	count := func(f []byte) int {
		pf.Deliver(f)
		for range 20 {
			pf.Step()
		}
		buf := make([]ring.RxDone, 8)
		n := q.Harvest(buf)
		bufs.Put(cookiesOf(buf[:n]))
		q.Post(bufs.rxBufs(t, n)[:n])
		return n
	}
	p.SetVLANFilter(true)
	if err := p.AddVLAN(100); err != nil {
		t.Fatal(err)
	}
	if n := count(tagged(100)); n != 1 {
		t.Errorf("VLAN 100 (added) delivered %d frames", n)
	}
	if n := count(tagged(200)); n != 0 {
		t.Errorf("VLAN 200 (not added) delivered %d frames", n)
	}
	p.SetVLANFilter(false)
	if n := count(tagged(200)); n != 1 {
		t.Errorf("VLAN 200 with the filter off delivered %d frames", n)
	}
}

func TestLinkPolled(t *testing.T) {
	var events []Link
	pf, p, _ := simPort(t, Config{OnLinkChange: func(l Link) { events = append(events, l) }})
	pf.SetLink(false)
	stepUntil(t, pf, "link down seen by polling", func() bool { return !p.PollLink().Up })
	pf.SetLink(true)
	stepUntil(t, pf, "link up seen by polling", func() bool { return p.PollLink().Up })
	want := []Link{{true, 10000}, {false, 0}, {true, 10000}}
	if len(events) != len(want) {
		t.Fatalf("link reports %v, want %v", events, want)
	}
	for i := range want {
		if events[i] != want[i] {
			t.Errorf("link report %d = %v, want %v", i, events[i], want[i])
		}
	}
}

func TestLinkInterrupt(t *testing.T) {
	ch := make(chan Link, 16)
	pf, _, _ := simPort(t, Config{LinkInterrupt: true, OnLinkChange: func(l Link) { ch <- l }})
	if l := <-ch; !l.Up { // the report from Open
		t.Fatalf("first report %v, want up", l)
	}
	for _, up := range []bool{false, true} {
		pf.SetLink(up)
		// The driver does not poll here: only the eventfd can tell it.
		deadline := time.After(5 * time.Second)
	wait:
		for {
			select {
			case l := <-ch:
				if l.Up == up {
					break wait
				}
			case <-deadline:
				t.Fatalf("no link-%v report through the interrupt eventfd", up)
			default:
				pf.Step()
				time.Sleep(100 * time.Microsecond)
			}
		}
	}
}

func TestOpenWithoutLink(t *testing.T) {
	pf := sim.NewPF(sim.DefaultOptions())
	defer pf.Close()
	pf.SetLink(false)
	alloc, _ := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	_, err := Open(pf, Config{IOVA: alloc, LinkTimeout: 50 * time.Millisecond})
	var te *TimeoutError
	if !errors.As(err, &te) || !strings.Contains(err.Error(), "LINKS.UP") {
		t.Fatalf("Open with no link partner: %v, want a timeout naming LINKS.UP", err)
	}
	if free := alloc.FreeBytes(); free != hugepage.DefaultIOVALimit-hugepage.DefaultIOVABase {
		t.Errorf("failed Open left %d bytes of IOVA space allocated", hugepage.DefaultIOVALimit-hugepage.DefaultIOVABase-free)
	}
	// With a negative timeout it opens with the link down.
	p, err := Open(pf, Config{IOVA: alloc, LinkTimeout: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if p.Link().Up {
		t.Error("link reported up with no link partner")
	}
}
