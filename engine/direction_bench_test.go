package engine

import (
	"encoding/binary"
	"fmt"
	"testing"
	"time"

	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vfio"
	"github.com/zcnet/zcnet/vhost"
)

// The per-direction benchmarks measure the channel with the NIC's side
// played by the test in the same thread, as ixgbe's benchmarks do: the
// 82599 driver runs unchanged over the simulated PF's registers, but
// instead of stepping the simulator (whose own cost per frame is several
// times the engine's), the test writes the write-back descriptors into
// the driver's rings itself: one status store per received frame (the
// frame's bytes are not written: the engine must not read them, so the
// figure is the same at every size) and one per sent packet. The guest's
// side is a driver that recycles every used buffer at once.

// wbDevice is the simulated PF as the NIC driver opens it, remembering
// the last value written to every register and every DMA mapping, so that
// the test finds the rings and their tails without the model.
type wbDevice struct {
	*sim.PF
	bar  wbBAR
	maps wbMaps
}

type wbBAR struct {
	vfio.BAR
	regs [sim.BAR0Size / 4]uint32
}

func (b *wbBAR) Write32(off uint32, v uint32) {
	if int(off/4) < len(b.regs) {
		b.regs[off/4] = v
	}
	b.BAR.Write32(off, v)
}

type wbMaps struct {
	vfio.DMAMapper
	m map[uint64][]byte
}

func (m *wbMaps) MapDMA(iova uint64, mem []byte) error {
	if err := m.DMAMapper.MapDMA(iova, mem); err != nil {
		return err
	}
	m.m[iova] = mem
	return nil
}

func (m *wbMaps) UnmapDMA(iova, size uint64) error {
	delete(m.m, iova)
	return m.DMAMapper.UnmapDMA(iova, size)
}

// bytes is the memory behind [iova, iova+n), which one mapping holds.
func (m *wbMaps) bytes(tb testing.TB, iova, n uint64) []byte {
	for base, mem := range m.m {
		if iova >= base && iova+n <= base+uint64(len(mem)) {
			return mem[iova-base : iova-base+n]
		}
	}
	tb.Fatalf("no DMA mapping holds [%#x, %#x)", iova, iova+n)
	return nil
}

func newWBDevice(pf *sim.PF) *wbDevice {
	d := &wbDevice{PF: pf, maps: wbMaps{DMAMapper: pf.DMA(), m: map[uint64][]byte{}}}
	bar, _ := pf.BAR(0)
	d.bar.BAR = bar
	return d
}

func (d *wbDevice) BAR(index int) (vfio.BAR, error) {
	if _, err := d.PF.BAR(index); err != nil {
		return nil, err
	}
	return &d.bar, nil
}

func (d *wbDevice) DMA() vfio.DMAMapper { return &d.maps }

// The 82599 registers and descriptor bits the test device uses (datasheet
// 8.2.3.8, 8.2.3.9, 7.1.6.2, 7.2.3.2.4): queue 0's ring base, length and
// tail; RX write-back status DD, EOP, L4CS, IPCS and the length at bit 32;
// TX write-back DD in the upper half.
const (
	wbRDBAL, wbRDBAH, wbRDLEN, wbRDH, wbRDT = 0x01000, 0x01004, 0x01008, 0x01010, 0x01018
	wbTDBAL, wbTDBAH, wbTDLEN, wbTDH, wbTDT = 0x06000, 0x06004, 0x06008, 0x06010, 0x06018
	wbRxDone                                = 1<<0 | 1<<1 | 1<<5 | 1<<6
	wbTxDone                                = 1 << 32
)

// wbRing is one of queue 0's descriptor rings as the test device sees it.
type wbRing struct {
	desc []byte
	mask uint32
	head uint32 // next descriptor the device completes
	tail *uint32
}

func (d *wbDevice) ring(tb testing.TB, bal, bah, dlen, head, tail uint32) wbRing {
	iova := uint64(d.bar.regs[bal/4]) | uint64(d.bar.regs[bah/4])<<32
	n := d.bar.regs[dlen/4]
	desc := d.maps.bytes(tb, iova, uint64(n))
	return wbRing{desc: desc, mask: n/16 - 1, head: d.bar.regs[head/4], tail: &d.bar.regs[tail/4]}
}

// complete writes back up to max descriptors the driver handed over
// (from the device's head to the tail), second quad word st, and returns
// how many.
func (r *wbRing) complete(max int, st uint64) int {
	n := 0
	for ; n < max && r.head&r.mask != *r.tail; n++ {
		d := r.desc[16*(r.head&r.mask):]
		binary.LittleEndian.PutUint64(d[:8], 0)
		binary.LittleEndian.PutUint64(d[8:16], st)
		r.head++
	}
	return n
}

// dirRig is a channel with the test as its NIC and its guest driver.
type dirRig struct {
	*rig
	nicDev *wbDevice
	rx     wbRing
	tx     wbRing
	frame  uint64 // received frame length (FCS stripped)
}

// newDirRig sets a channel up for one direction: rx, 255 guest receive
// buffers (127 of them on the NIC); otherwise 128 guest frames of size
// bytes on the wire (FCS included) to transmit again and again. The
// device offers live migration; migrating has the guest's front end turn
// dirty logging on (as QEMU does for the whole of a migration), so that
// every page the channel writes is marked.
func newDirRig(tb testing.TB, rx bool, size int, migrating bool) *dirRig {
	d := &dirRig{frame: uint64(size - 4)}
	d.rig = newRig(tb, rigOptions{guest: guest.Options{RxBufSize: 4096, QueueSize: 256}, frame: size, migration: true,
		device: func(pf *sim.PF) vfio.Device { d.nicDev = newWBDevice(pf); return d.nicDev }})
	d.pf.Attach(nil)
	if migrating {
		log, err := d.g.StartMigration()
		if err != nil {
			tb.Fatal(err)
		}
		tb.Cleanup(func() { log.Close() })
	}
	if rx {
		d.postRx(tb, 255)
		d.rx = d.nicDev.ring(tb, wbRDBAL, wbRDBAH, wbRDLEN, wbRDH, wbRDT)
	} else {
		for _, f := range testFrames(128, size-4) {
			if err := d.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
				tb.Fatal(err)
			}
		}
		d.channel.Poll()
		d.tx = d.nicDev.ring(tb, wbTDBAL, wbTDBAH, wbTDLEN, wbTDH, wbTDT)
	}
	for range 200 { // warm up: every path taken once
		if rx {
			d.wireToGuest(32)
		} else {
			d.guestToWire()
		}
	}
	return d
}

// recycle is the guest driver: every used buffer of ring i is made
// available again at once. It returns how many.
func (r *rig) recycle(i int) int {
	q := r.g.Ring(i)
	n := 0
	for {
		head, _, ok := q.Used()
		if !ok {
			break
		}
		q.Repost(head)
		n++
	}
	q.Publish()
	return n
}

// wireToGuest is one round of receiving: burst frames arrive in the
// buffers the NIC holds, the channel polls once, the guest takes the
// frames and posts their buffers again. It returns the frames the guest
// got and the time of the poll.
func (d *dirRig) wireToGuest(burst int) (int, time.Duration) {
	d.rx.complete(burst, wbRxDone|d.frame<<32)
	start := time.Now()
	d.channel.Poll()
	pmd := time.Since(start)
	return d.recycle(0), pmd
}

// guestToWire is one round of transmitting: the NIC finishes every
// packet it was given, the channel polls once (giving their buffers back
// and submitting a burst of new ones), the guest transmits its buffers
// again. It returns the frames the guest got back and the time of the
// poll.
func (d *dirRig) guestToWire() (int, time.Duration) {
	d.tx.complete(1<<30, wbTxDone)
	start := time.Now()
	d.channel.Poll()
	pmd := time.Since(start)
	return d.recycle(1), pmd
}

func (d *dirRig) round(rx bool) (int, time.Duration) {
	if rx {
		return d.wireToGuest(32)
	}
	return d.guestToWire()
}

// TestDirectionRigs checks what the per-direction benchmarks measure:
// frames move zero-copy in the one direction, 32 a round, the guest gets
// each received frame's header right, and a round allocates nothing.
func TestDirectionRigs(t *testing.T) {
	for _, rx := range []bool{true, false} {
		for _, size := range []int{64, 1518} {
			d := newDirRig(t, rx, size, false)
			start := d.channel.Stats()
			frames := 0
			allocs := testing.AllocsPerRun(100, func() {
				n, _ := d.round(rx)
				frames += n
			})
			st := d.channel.Stats()
			if allocs != 0 {
				t.Errorf("rx=%v %d B: a round allocates %.1f times, want 0", rx, size, allocs)
			}
			moved, zc := st.TxPackets-start.TxPackets, st.TxZeroCopy-start.TxZeroCopy
			if rx {
				moved, zc = st.RxPackets-start.RxPackets, st.RxZeroCopy-start.RxZeroCopy
			}
			if frames != 101*32 || moved != uint64(frames) || zc != moved || st.RxCopied+st.TxCopied != 0 {
				t.Fatalf("rx=%v %d B: %d frames back to the guest, %d moved, %d zero-copy: %+v", rx, size, frames, moved, zc, st)
			}
			if !rx {
				continue
			}
			d.rx.complete(1, wbRxDone|d.frame<<32)
			d.channel.Poll()
			got, err := d.g.Receive(0)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != 1 || len(got[0].Frame) != int(d.frame) || got[0].Hdr.NumBuffers != 1 ||
				got[0].Hdr.Flags != vhost.NetHdrFDataValid || got[0].Hdr.GSOType != vhost.NetHdrGSONone {
				t.Fatalf("%d B: the guest got %d frames: %+v", size, len(got), got)
			}
		}
	}
}

// BenchmarkChannelWireToGuest and BenchmarkChannelGuestToWire report the
// cost per frame of each direction alone, zero-copy, in bursts of 32:
// pmd-ns/frame is the channel's poll (what the poll core spends: NIC
// driver, vhost ring and engine; the two clock reads per poll add about
// 1 ns/frame), ns/frame the whole round with the test's NIC and guest.
// The -migrating cases run with the front end's dirty log on, as during a
// live migration: every guest page written is marked before it is
// published.
func BenchmarkChannelWireToGuest(b *testing.B) { benchDirection(b, true) }

func BenchmarkChannelGuestToWire(b *testing.B) { benchDirection(b, false) }

func benchDirection(b *testing.B, rx bool) {
	for _, migrating := range []bool{false, true} {
		for _, size := range []int{64, 1518} {
			name := fmt.Sprintf("%dB", size)
			if migrating {
				name += "-migrating"
			}
			b.Run(name, func(b *testing.B) {
				d := newDirRig(b, rx, size, migrating)
				start := d.channel.Stats()
				frames := timeRounds(b, "frame", func() (int, time.Duration) { return d.round(rx) })
				st := d.channel.Stats()
				if frames == 0 || st.RxCopied+st.TxCopied != start.RxCopied+start.TxCopied {
					b.Fatalf("%d frames, copies: %+v", frames, st)
				}
			})
		}
	}
}

// BenchmarkChannelIdlePoll is the fixed cost of a poll, paid once per
// burst whatever it moves: both rings running, nothing to move. "lock" is
// the data-path lock alone (taken and released, uncontended), a part of
// every poll.
func BenchmarkChannelIdlePoll(b *testing.B) {
	d := newDirRig(b, true, 64, false)
	b.Run("poll", func(b *testing.B) {
		b.ReportAllocs()
		for b.Loop() {
			d.channel.Poll()
		}
	})
	b.Run("lock", func(b *testing.B) {
		for b.Loop() {
			d.dev.LockDataPath()
			d.dev.UnlockDataPath()
		}
	})
}
