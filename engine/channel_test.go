package engine

import (
	"bytes"
	"cmp"
	"context"
	"net"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zcnet/zcnet/ring"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
	"github.com/zcnet/zcnet/vhost"
)

// The 82599's queue pairs are what the engine drives on hardware.

// rig is one simulated 82599, one vhost device served on a socket, a channel
// joining them and a test guest.
type rig struct {
	pf      *sim.PF
	nic     *ixgbe.Port
	dev     *vhost.Device
	dma     *GuestDMA
	channel *Channel
	path    string
	g       *guest.Guest
	wire    *recorder // frames the NIC transmitted
	input   *recorder // frames the generator sent to the NIC
	gen     *wire.Generator
}

type rigOptions struct {
	channel ChannelConfig
	guest   guest.Options
	frame   int // generator frame size on the wire (FCS included)
	// features the device offers (0: vhost.DefaultFeatures).
	features uint64
	// filterMACs: the channel programs the guest's MAC into the NIC's filter.
	filterMACs bool
	// nic, if set, stands between the channel and the NIC's queue pair
	// (to watch or disturb what the channel asks of the NIC).
	nic func(ring.QueuePair) ring.QueuePair
	// migration offers live migration (dirty logging).
	migration bool
	// device, if set, is what the NIC driver opens in place of the
	// simulated PF itself (to watch its registers and DMA mappings).
	device func(*sim.PF) vfio.Device
	// rxRing is the NIC's RX ring size (default 128).
	rxRing int
	// noGuest leaves r.g nil: the test attaches a guest itself (to
	// migrate one from another rig).
	noGuest bool
}

// recorder keeps copies of frames.
type recorder struct {
	mu     sync.Mutex
	frames [][]byte
}

func (r *recorder) Deliver(f []byte) {
	r.mu.Lock()
	r.frames = append(r.frames, append([]byte(nil), f...))
	r.mu.Unlock()
}

func (r *recorder) take() [][]byte {
	r.mu.Lock()
	defer r.mu.Unlock()
	f := r.frames
	r.frames = nil
	return f
}

func newRig(t testing.TB, o rigOptions) *rig {
	t.Helper()
	r := &rig{pf: sim.NewPF(sim.DefaultOptions()), wire: &recorder{}, input: &recorder{}}
	alloc, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	if err != nil {
		t.Fatal(err)
	}
	var dev vfio.Device = r.pf
	if o.device != nil {
		dev = o.device(r.pf)
	}
	r.nic, err = ixgbe.Open(dev, ixgbe.Config{IOVA: alloc, LinkTimeout: 2 * time.Second,
		RxRingSize: cmp.Or(o.rxRing, 128), TxRingSize: 128, RingMemory: hugepage.Options{PageSize: hugepage.Page4K}})
	if err != nil {
		t.Fatalf("ixgbe.Open on the simulator: %v", err)
	}
	r.pf.Attach(r.wire)
	pool := newCopyPool(t, r.pf, alloc)

	r.dma = NewGuestDMA(r.pf.DMA(), alloc)
	r.dev, err = vhost.NewDevice(vhost.Config{Name: "g0", Hook: r.dma, Features: o.features, Migration: o.migration})
	if err != nil {
		t.Fatal(err)
	}
	r.path = filepath.Join(t.TempDir(), "vhost.sock")
	l, err := vhost.Listen(r.path)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := vhost.ServeListener(ctx, l, r.dev); err != nil {
			t.Errorf("ServeListener: %v", err)
		}
	}()
	pc := o.channel
	pc.Device, pc.NIC, pc.DMA, pc.CopyPool = r.dev, r.nic.QueuePair(0), r.dma, pool
	if o.nic != nil {
		pc.NIC = o.nic(pc.NIC)
	}
	if o.filterMACs {
		pc.MACFilter = ixgbeMACFilter(r.nic)
	}
	r.channel, err = NewChannel(pc)
	if err != nil {
		t.Fatal(err)
	}
	if !o.noGuest {
		if r.g, err = guest.Dial(r.path, o.guest); err != nil {
			t.Fatal(err)
		}
	}
	size := o.frame
	if size == 0 {
		size = 128
	}
	r.gen, err = wire.NewGenerator(wire.GeneratorConfig{FrameSize: size, DstMAC: wire.MAC(sim.DefaultOptions().MAC)}, wire.Tee{r.input, r.pf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if r.g != nil {
			r.g.Close()
		}
		cancel()
		wg.Wait()
		if err := r.channel.Close(); err != nil {
			t.Errorf("channel Close: %v", err)
		}
		if err := r.nic.Close(); err != nil {
			t.Errorf("NIC Close: %v", err)
		}
		// The guest is gone and its memory unmapped: the NIC must never
		// have touched memory outside a mapping.
		if c := r.pf.Counters(); c.IOMMUFaults != 0 {
			t.Errorf("simulator counted %d IOMMU faults (last at IOVA %#x)", c.IOMMUFaults, c.LastFaultIOVA)
		}
		if n := r.dma.Mapped(); n != 0 {
			t.Errorf("%d guest regions still DMA-mapped after the guest left", n)
		}
		r.pf.Close()
	})
	return r
}

// newCopyPool maps a pool of 2 KiB host buffers for the NIC. It checks
// for double frees: a buffer returned twice panics at the faulty Put
// instead of corrupting the pool and failing somewhere later.
func newCopyPool(t testing.TB, pf *sim.PF, alloc *hugepage.IOVAAllocator) *hugepage.Pool {
	t.Helper()
	pool, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
		Pool:    hugepage.PoolConfig{BufSize: 2048, Count: 1024, CheckDoubleFree: true},
		Memory:  hugepage.Options{PageSize: hugepage.Page4K, Name: "engine-test-copy"},
		Domains: []hugepage.DMADomain{{Mapper: pf.DMA(), IOVA: alloc}},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Runs after the rig's cleanup has stopped the NIC.
	t.Cleanup(func() {
		if err := pool.Close(); err != nil {
			t.Errorf("copy pool: %v", err)
		}
	})
	return pool.Pool
}

// step runs the simulator and the channel once.
func (r *rig) step() {
	r.pf.Step()
	r.channel.Poll()
}

// postRx makes n guest receive buffers available and lets the channel post
// them to the NIC (the NIC queue starts only then).
func (r *rig) postRx(t testing.TB, n int) {
	t.Helper()
	if err := r.g.PostRx(0, n); err != nil {
		t.Fatal(err)
	}
	r.channel.Poll()
}

// receive runs until the guest got n frames (or fails), posting the
// buffers of each step's frames again.
func (r *rig) receive(t testing.TB, n int) []guest.Packet {
	t.Helper()
	return r.receiveFor(t, n, true)
}

// receiveFor is receive; with repost false the guest keeps the buffers of
// the frames it read.
func (r *rig) receiveFor(t testing.TB, n int, repost bool) []guest.Packet {
	t.Helper()
	var got []guest.Packet
	for i := 0; i < 20000 && len(got) < n; i++ {
		r.step()
		pk, err := r.g.Receive(0)
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, pk...)
		used := 0
		for _, p := range pk {
			used += max(1, int(p.Hdr.NumBuffers))
		}
		if used > 0 && repost {
			if err := r.g.PostRx(0, used); err != nil {
				t.Fatal(err)
			}
		}
	}
	if len(got) != n {
		t.Fatalf("guest received %d frames, want %d (channel stats %+v)", len(got), n, r.channel.Stats())
	}
	return got
}

// checkIntact compares what the guest received with what was sent.
func checkIntact(t testing.TB, got []guest.Packet, sent [][]byte) {
	t.Helper()
	if len(got) != len(sent) {
		t.Fatalf("received %d frames, sent %d", len(got), len(sent))
	}
	for i := range got {
		if !bytes.Equal(got[i].Frame, sent[i]) {
			t.Fatalf("frame %d differs:\n got %x\nwant %x", i, got[i].Frame, sent[i])
		}
	}
}

func TestRxZeroCopy(t *testing.T) {
	for _, c := range []struct {
		name   string
		frame  int
		guest  guest.Options
		spans  bool
		dvalid bool
	}{
		{name: "small", frame: 128, dvalid: true},
		{name: "full-size", frame: 1518, dvalid: true},
		// 1200-byte guest buffers give 1 KiB NIC buffers: a full-size
		// frame spans two guest buffers (num_buffers 2).
		{name: "spanning", frame: 1518, guest: guest.Options{RxBufSize: 1200}, spans: true, dvalid: true},
		// The same with the header in a descriptor of its own: the data
		// of the second buffer moves down over its header piece.
		{name: "spanning-header-apart", frame: 1518, guest: guest.Options{RxBufSize: 1200 + rxGapForTest, RxHeaderApart: true}, spans: true, dvalid: true},
		// What Linux posts without mergeable buffers: one buffer of the
		// header and 1518 bytes (its GOOD_PACKET_LEN), which holds every
		// frame the NIC accepts (1514 bytes, 1518 with a VLAN tag).
		{name: "linux-small-no-mrg", frame: 1518, guest: guest.Options{Features: guest.DefaultWanted &^ vhost.NetFMrgRxbuf, RxBufSize: 12 + 1518}, dvalid: true},
		// Linux's big-packet layout without mergeable buffers: the header
		// alone, then the data in a page.
		{name: "linux-big-no-mrg", frame: 1518, guest: guest.Options{Features: guest.DefaultWanted &^ vhost.NetFMrgRxbuf, RxBufSize: 4096, RxHeaderApart: true}, dvalid: true},
		{name: "header-apart-mrg", frame: 700, guest: guest.Options{RxBufSize: 4096, RxHeaderApart: true}, dvalid: true},
		{name: "no-guest-csum", frame: 200, guest: guest.Options{Features: guest.DefaultWanted &^ vhost.NetFGuestCsum, RxBufSize: 4096}},
	} {
		t.Run(c.name, func(t *testing.T) {
			if c.guest.RxBufSize == 0 {
				c.guest.RxBufSize = 4096
			}
			r := newRig(t, rigOptions{guest: c.guest, frame: c.frame})
			r.postRx(t, 64)
			const n = 208 // more than the guest's 64 buffers: reposting must work
			sent := 0
			var got []guest.Packet
			for sent < n {
				r.gen.Emit(16)
				sent += 16
				got = append(got, r.receive(t, 16)...)
			}
			checkIntact(t, got, r.input.take())
			for i, p := range got {
				if valid := p.Hdr.Flags&vhost.NetHdrFDataValid != 0; valid != c.dvalid {
					t.Fatalf("frame %d: DATA_VALID %v, want %v", i, valid, c.dvalid)
				}
				if want := uint16(1); c.spans {
					if p.Hdr.NumBuffers != 2 {
						t.Fatalf("frame %d: num_buffers %d, want 2", i, p.Hdr.NumBuffers)
					}
				} else if p.Hdr.NumBuffers != want {
					t.Fatalf("frame %d: num_buffers %d, want 1", i, p.Hdr.NumBuffers)
				}
			}
			st := r.channel.Stats()
			if st.RxZeroCopy != n || st.RxCopied != 0 || st.RxPackets != n {
				t.Fatalf("want %d frames received zero-copy, none copied: %+v", n, st)
			}
			if c.spans && st.RxSpanMoves != n {
				t.Fatalf("want %d span moves, stats %+v", n, st)
			}
		})
	}
}

// rxGapForTest is sim/guest's distance from an RxHeaderApart buffer's
// header to its data.
const rxGapForTest = 64

func waitBriefly() { time.Sleep(time.Millisecond) }

func dialUnix(path string) (*net.UnixConn, error) {
	return net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
}
