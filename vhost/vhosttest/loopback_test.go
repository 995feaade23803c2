package vhosttest_test

import (
	"bytes"
	"encoding/binary"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// BenchmarkLoopbackEcho is the io mode of the testpmd benchmark in one
// process: a poll-mode guest (sim/guest's burst API, which allocates
// nothing) keeps a burst of 64-byte frames circulating through the
// back end's Loopback, echoing each frame it receives. An op is one frame
// round trip; loopback-ns/frame is the share spent in Loopback.Poll, the
// back end's cost per frame (pop TX, pop RX, copy, push both, publish).
func BenchmarkLoopbackEcho(b *testing.B) {
	e := newEcho(b)
	var inPoll time.Duration
	b.ReportAllocs()
	b.ResetTimer()
	for moved := 0; moved < b.N; {
		start := time.Now()
		e.loop.Poll()
		inPoll += time.Since(start)
		moved += e.echo(b)
	}
	b.StopTimer()
	b.ReportMetric(float64(inPoll.Nanoseconds())/float64(b.N), "loopback-ns/frame")
	if c := e.loop.Counters(); c.Dropped != 0 {
		b.Fatalf("loopback dropped frames: %+v", c)
	}
}

// echoGuest is a poll-mode guest (sim/guest's burst API, which allocates
// nothing) with a burst of 64-byte frames in flight through a Loopback.
type echoGuest struct {
	dev    *vhost.Device
	g      *guest.Guest
	loop   *vhosttest.Loopback
	frames []guest.RxFrame
}

const echoBurst = 32

func newEcho(tb testing.TB) *echoGuest {
	s := vhosttest.Serve(tb, vhost.Config{Features: vhost.DefaultFeatures | vhost.FInOrder})
	g, err := guest.Dial(s.Path, guest.Options{Features: guest.DefaultWanted | vhost.FInOrder, RxBufSize: 2048, TxBufSize: 2048})
	if err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { g.Close() })
	if err := g.RefillRx(0, int(g.Ring(0).Size())); err != nil {
		tb.Fatal(err)
	}
	frame := make([]byte, 64-4) // 64 bytes on the wire with the FCS
	copy(frame, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5})
	for range echoBurst {
		if err := g.QueueTx(0, vhost.NetHeader{}, frame); err != nil {
			tb.Fatal(err)
		}
	}
	if err := g.FlushTx(0); err != nil {
		tb.Fatal(err)
	}
	return &echoGuest{dev: s.Dev, g: g, loop: vhosttest.NewLoopback(s.Dev), frames: make([]guest.RxFrame, 0, echoBurst)}
}

// echo receives what the loopback delivered, transmits it again, reposts
// the RX buffers and reclaims TX ones. It returns the frames echoed and
// fails if there were none (the loop stalled).
func (e *echoGuest) echo(tb testing.TB) int {
	g := e.g
	got, err := g.ReceiveInPlace(0, e.frames[:0])
	if err != nil {
		tb.Fatal(err)
	}
	if len(got) == 0 {
		tb.Fatalf("the loop stalled: %+v", e.loop.Counters())
	}
	for i := range got {
		if err := g.QueueTx(0, vhost.NetHeader{}, got[i].Frame); err != nil {
			tb.Fatal(err)
		}
	}
	if err := g.FlushTx(0); err != nil {
		tb.Fatal(err)
	}
	if err := g.RefillRx(0, len(got)); err != nil {
		tb.Fatal(err)
	}
	g.ReclaimTx(0)
	return len(got)
}

// TestLoopbackBackpressure checks that frames the guest has posted no RX
// buffers for wait on the TX queue, in order, until it posts some, rather
// than being dropped or overtaking each other.
func TestLoopbackBackpressure(t *testing.T) {
	s := vhosttest.Serve(t, vhost.Config{Features: vhost.DefaultFeatures | vhost.FInOrder})
	g, err := guest.Dial(s.Path, guest.Options{Features: guest.DefaultWanted | vhost.FInOrder})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	loop := vhosttest.NewLoopback(s.Dev)
	const sent, posted = 5, 2
	if err := g.PostRx(0, posted); err != nil {
		t.Fatal(err)
	}
	for i := range sent {
		frame := make([]byte, 60)
		copy(frame, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5, byte(i)})
		if err := g.Transmit(0, vhost.NetHeader{}, frame); err != nil {
			t.Fatal(err)
		}
	}
	loop.Poll()
	got, err := g.Receive(0)
	if err != nil {
		t.Fatal(err)
	}
	if c := loop.Counters(); len(got) != posted || c.Frames != posted || c.NoRxBuffer == 0 || c.Dropped != 0 {
		t.Fatalf("with %d RX buffers for %d frames: received %d, counters %+v", posted, sent, len(got), c)
	}
	if err := g.PostRx(0, sent); err != nil {
		t.Fatal(err)
	}
	loop.Poll()
	more, err := g.Receive(0)
	if err != nil {
		t.Fatal(err)
	}
	got = append(got, more...)
	if len(got) != sent {
		t.Fatalf("received %d of %d frames after posting more buffers: %+v", len(got), sent, loop.Counters())
	}
	for i, p := range got {
		if p.Frame[14] != byte(i) || p.Frame[5] != 2 || p.Frame[11] != 1 {
			t.Errorf("frame %d came back as % x (want sequence %d, MACs swapped)", i, p.Frame[:15], i)
		}
	}
	if n := g.ReclaimTx(0); n != sent {
		t.Errorf("%d TX buffers completed, want %d", n, sent)
	}
}

// TestLoopbackPollAllocatesNothing guards the hot path: a poll that moves
// a burst of frames (with the allocation-free guest echoing them) must not
// allocate.
func TestLoopbackPollAllocatesNothing(t *testing.T) {
	e := newEcho(t)
	allocs := testing.AllocsPerRun(50, func() {
		e.loop.Poll()
		e.echo(t)
	})
	if allocs != 0 {
		t.Fatalf("a loopback poll of %d frames allocated %.1f times", echoBurst, allocs)
	}
	// What BenchmarkLoopbackEcho checks of the same loop: every frame
	// the guest echoes comes back, none is dropped.
	if c := e.loop.Counters(); c.Dropped != 0 || c.Frames < 50*echoBurst {
		t.Fatalf("the echo loop dropped frames or stalled: %+v", c)
	}
}

// TestBlockedCallFdDoesNotStallThePoller: the front end puts its call
// eventfd's counter at the maximum and switches the (shared) file
// description back to blocking mode, so that a write of 1 blocks until
// somebody reads it. The poller must go on moving frames, and the session
// must still end when the front end leaves, its descriptor released.
func TestBlockedCallFdDoesNotStallThePoller(t *testing.T) {
	fds := openFDs(t)
	e := newEcho(t)
	for i := range 2 {
		fd := e.g.CallFD(i)
		var max [8]byte
		binary.LittleEndian.PutUint64(max[:], 0xfffffffffffffffe)
		if _, err := unix.Write(fd, max[:]); err != nil {
			t.Fatal(err)
		}
		flags, err := unix.FcntlInt(uintptr(fd), unix.F_GETFL, 0)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_SETFL, flags&^unix.O_NONBLOCK); err != nil {
			t.Fatal(err)
		}
	}
	done := make(chan int)
	go func() {
		moved := 0
		for range 200 {
			e.loop.Poll()
			got, err := e.g.ReceiveInPlace(0, e.frames[:0])
			if err != nil {
				t.Error(err)
				break
			}
			for i := range got {
				if err := e.g.QueueTx(0, vhost.NetHeader{}, got[i].Frame); err != nil {
					t.Error(err)
				}
			}
			_ = e.g.FlushTx(0)
			_ = e.g.RefillRx(0, len(got))
			e.g.ReclaimTx(0)
			moved += len(got)
		}
		done <- moved
	}()
	select {
	case moved := <-done:
		if moved < 200 {
			t.Fatalf("the loop moved %d frames in 200 polls with the call fd blocked", moved)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the poller is stuck: it blocked writing the front end's call eventfd")
	}
	e.g.Close()
	waitDisconnected(t, e.dev)
	deadline := time.Now().Add(5 * time.Second)
	for openFDs(t) > fds && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := openFDs(t); n > fds {
		t.Fatalf("%d eventfds open after the front end left, %d before: the blocked notifier kept its descriptor", n, fds)
	}
}

// openFDs counts the process's eventfds and guest memory files.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		link, err := os.Readlink(filepath.Join("/proc/self/fd", e.Name()))
		if err == nil && (strings.Contains(link, "eventfd") || strings.HasPrefix(link, "/memfd:")) {
			n++
		}
	}
	return n
}

func waitDisconnected(t *testing.T, d *vhost.Device) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); d.Connected(); time.Sleep(2 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("back end did not notice the disconnect")
		}
	}
}

// TestLoopbackHeaderWithoutHostOffloads checks the header the loopback
// delivers to a driver that negotiated no host offload (no
// VIRTIO_NET_F_CSUM, no HOST_ GSO feature): whatever that driver left in
// its transmit header (here a checksum request it had no right to make)
// is ignored, and every received frame has the all-zero header with
// num_buffers 1, written over whatever the receive buffer held before
// (here 0xaa bytes), with the frame itself intact and its MACs swapped.
func TestLoopbackHeaderWithoutHostOffloads(t *testing.T) {
	s := vhosttest.Serve(t, vhost.Config{Features: vhost.DefaultFeatures | vhost.FInOrder})
	var wanted uint64 = guest.DefaultWanted&^(vhost.NetFCsum|vhost.NetFHostTSO4|vhost.NetFHostTSO6) | vhost.FInOrder
	g, err := guest.Dial(s.Path, guest.Options{Features: wanted, RxBufSize: 2048, TxBufSize: 2048})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Features&(vhost.NetFCsum|vhost.NetFHostTSO4|vhost.NetFHostTSO6) != 0 || g.HdrLen() != vhost.NetHeaderSize {
		t.Fatalf("negotiated %#x, header %d bytes: want no host offload and a 12-byte header", g.Features, g.HdrLen())
	}
	const frames = 8
	if err := g.RefillRx(0, frames); err != nil {
		t.Fatal(err)
	}
	poisoned := 0
	for head := range g.Ring(0).Size() {
		if gpa, ok := g.RxBufferGPA(0, head); ok {
			b := g.Mem.Bytes(gpa, vhost.NetHeaderSize)
			for i := range b {
				b[i] = 0xaa
			}
			poisoned++
		}
	}
	if poisoned != frames {
		t.Fatalf("poisoned %d receive buffers, want %d", poisoned, frames)
	}
	hostile := vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 6, NumBuffers: 7}
	for i := range frames {
		frame := make([]byte, 60)
		copy(frame, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x08, 0x00, byte(i)})
		if err := g.QueueTx(0, hostile, frame); err != nil {
			t.Fatal(err)
		}
	}
	if err := g.FlushTx(0); err != nil {
		t.Fatal(err)
	}
	loop := vhosttest.NewLoopback(s.Dev)
	loop.Poll()
	got, err := g.ReceiveInPlace(0, make([]guest.RxFrame, 0, frames))
	if err != nil {
		t.Fatal(err)
	}
	if c := loop.Counters(); len(got) != frames || c.Frames != frames || c.Dropped != 0 {
		t.Fatalf("received %d of %d frames, counters %+v", len(got), frames, c)
	}
	for i, f := range got {
		if f.Hdr != (vhost.NetHeader{NumBuffers: 1}) {
			t.Errorf("frame %d: header %+v, want all zero with num_buffers 1", i, f.Hdr)
		}
		want := make([]byte, 60)
		copy(want, []byte{0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00, byte(i)})
		if !bytes.Equal(f.Frame, want) {
			t.Errorf("frame %d came back as % x, want % x (MACs swapped, nothing else changed)", i, f.Frame, want)
		}
	}
}

// TestLoopbackMixedBurst: in one poll, frames the loopback moves a burst
// at a time (one TX descriptor to one RX buffer that holds it) and a
// frame it must spread over two mergeable RX buffers come back in the
// order sent, each intact with its MACs swapped, the large one in two
// buffers: the burst path stops at the large frame and gives back what it
// popped after it, and the chain path carries on from there.
func TestLoopbackMixedBurst(t *testing.T) {
	s := vhosttest.Serve(t, vhost.Config{Features: vhost.DefaultFeatures | vhost.FInOrder})
	g, err := guest.Dial(s.Path, guest.Options{Features: guest.DefaultWanted | vhost.FInOrder, RxBufSize: 1024, TxBufSize: 2048})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Features&vhost.NetFMrgRxbuf == 0 {
		t.Fatalf("negotiated %#x: want mergeable receive buffers", g.Features)
	}
	sizes := []int{60, 60, 1500, 60, 60}
	if err := g.PostRx(0, len(sizes)+1); err != nil {
		t.Fatal(err)
	}
	var want [][]byte
	for i, n := range sizes {
		f := make([]byte, n)
		copy(f, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5, byte(i)})
		for j := 15; j < n; j++ {
			f[j] = byte(i + j)
		}
		if err := g.QueueTx(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
		w := append([]byte(nil), f...)
		copy(w, []byte{0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1})
		want = append(want, w)
	}
	if err := g.FlushTx(0); err != nil {
		t.Fatal(err)
	}
	loop := vhosttest.NewLoopback(s.Dev)
	loop.Poll()
	got, err := g.Receive(0)
	if err != nil {
		t.Fatal(err)
	}
	if c := loop.Counters(); len(got) != len(sizes) || c.Frames != uint64(len(sizes)) || c.Dropped != 0 {
		t.Fatalf("received %d of %d frames, counters %+v", len(got), len(sizes), c)
	}
	for i, p := range got {
		if !bytes.Equal(p.Frame, want[i]) {
			t.Errorf("frame %d (%d bytes) came back as % x..., want % x...", i, sizes[i], p.Frame[:16], want[i][:16])
		}
		if wantBufs := 1 + btoi(sizes[i] > 1000); int(p.Hdr.NumBuffers) != wantBufs {
			t.Errorf("frame %d: num_buffers %d, want %d", i, p.Hdr.NumBuffers, wantBufs)
		}
	}
	if n := g.ReclaimTx(0); n != len(sizes) {
		t.Errorf("%d TX buffers completed, want %d", n, len(sizes))
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}
