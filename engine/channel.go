package engine

import (
	"errors"
	"fmt"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/internal/memfault"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/vhost"
)

// MACFilter is the NIC's unicast address filter as it concerns one channel's
// guest. With zero copy the NIC picks the buffer a frame lands in, so it
// must accept the guest's own address itself: a frame the filter rejects
// never reaches the engine.
type MACFilter interface {
	// AcceptGuestMAC makes the NIC deliver frames addressed to mac to the
	// channel's queues; prev (all zero if none) is the address accepted
	// before for this guest, which it stops accepting. mac all zero means
	// none: the channel is closing and needs no address any more.
	AcceptGuestMAC(prev, mac [6]byte) error
}

// ChannelConfig describes a Channel.
type ChannelConfig struct {
	// Name labels the channel (task name, logs).
	Name string
	// Device and Pair select the guest's virtio queue pair.
	Device *vhost.Device
	Pair   int
	// NIC is the NIC queue pair the channel owns. Its queues must be
	// stopped and empty (the channel starts them when the guest is ready):
	// stop them with StopRx/StopTx right after opening the NIC.
	NIC ring.QueuePair
	// DMA is the guest's memory hook (the Device's Config.Hook).
	DMA *GuestDMA
	// MACFilter, if set, is told the guest's MAC: GuestMAC at once, or
	// else the one the channel learns from the guest's frames.
	MACFilter MACFilter
	// GuestMAC is the guest's MAC from the configuration. Zero: the channel
	// learns it from the source address of the guest's transmitted frames
	// (every guest sends ARP, neighbour discovery or DHCP before it
	// expects unicast) and follows a change, as a learning switch does.
	GuestMAC [6]byte
	// FollowGuestMAC, with GuestMAC set, starts from GuestMAC but follows
	// the guest to another source address as without one (a guest trusted
	// to change its MAC). Without it a configured MAC is fixed.
	FollowGuestMAC bool
	// CopyPool supplies host buffers for the copy path. It must be DMA
	// mapped in the NIC's IOMMU domain, its buffers at least 2048 bytes,
	// and used by this channel only (one pool per lcore, shared by the channels
	// of that lcore, is fine). Required. Buffers of the NIC's RxMaxWrite
	// rounded up to 1 KiB keep the host-buffer fallback of zero-copy
	// guests without MRG_RXBUF (see zeroCopyBufSize); 2048 covers the
	// standard MTU.
	CopyPool *hugepage.Pool
	// ForceCopy copies every frame through host buffers (for benchmarks
	// and to compare with the zero-copy path).
	ForceCopy bool
	// Burst bounds the work of one Poll per direction (default 32).
	Burst int
	// TxCompleteBatch is how many TX completions are gathered before they
	// are published to the guest (and it is signalled if it asked); they
	// are always published when the NIC's TX queue drains. Default 32.
	TxCompleteBatch int
}

// ErrClosed is what Err reports once Close has run.
var ErrClosed = errors.New("engine: channel closed")

// Cookies: bit 63 marks a host (copy) buffer, whose pool index or TX
// record is in the low 32 bits; otherwise the low 16 bits are a guest
// chain head.
const copyCookie ring.Cookie = 1 << 63

const (
	maxRxMerge = 64 // guest buffers per received frame
	maxTxSegs  = 32 // NIC data descriptors per zero-copy packet
	maxSegs    = 64 // segments per guest chain
	frameProbe = 128
)

// Channel joins one NIC queue pair to one virtio queue pair of one guest. It
// is a Task: an lcore calls Poll, which does one burst of RX and TX work
// with the guest's data-path lock held.
//
// Stopping: when the front end stops a ring, the device calls the channel
// (through GuestDMA, its RingHook) with the data-path lock held, and the
// channel stops that direction's NIC queue, waits until the NIC confirms, and
// pushes every guest chain it held back to the used ring (completed ones
// with their length, the rest with 0) before the device replies. The
// direction starts again, on a later Poll, when the front end restarts the
// ring. Poll also notices a ring the device no longer hands to pollers
// without stopping it (the hook was not called): a guest error broke it
// (NEEDS_RESET), or the control queue deactivated its pair. It stops the
// NIC queue then, and the ring's chains go back to its used ring all the
// same (packets the NIC sent as sent, the rest dropped and counted), so
// that the guest, which must reset a broken device anyway, still gets back
// every buffer the channel took, and the channel holds none.
//
// The hook clears the channel's view of a ring the device stops (rxv, txv),
// so a ring the channel still has is one whose memory and used ring the
// device still has: the channel may always give its chains back there.
type Channel struct {
	cfg  ChannelConfig
	dev  *vhost.Device
	nic  ring.QueuePair
	rxq  ring.RxQueue
	txq  ring.TxQueue
	dma  *GuestDMA
	pool *hugepage.Pool

	// The virtqueues as seen by the last Poll: a change means the front end
	// stopped or restarted them, and the NIC must give our buffers back.
	rxv, txv  *vhost.Virtqueue
	rxRunning bool
	txRunning bool
	failed    error
	// faulted says the guest's memory went away under the channel (see
	// contain); the channel stays stopped until the device's session,
	// faultSession then, has ended.
	faulted      error
	faultSession uint64

	hdrLen   int
	features uint64
	// dataValid has bit v set when a received frame whose two checksum
	// verdicts read v (ring.RxDone.Flags>>ring.RxIPCsumShift&0xF) may be
	// marked DATA_VALID for the guest: it negotiated GUEST_CSUM, the NIC
	// found the TCP/UDP checksum good and the IP header checksum not bad.
	dataValid uint16

	rx rxState
	tx txState

	drain []ring.Cookie
	st    stats
	// view is the guest's DMA regions as of this polling round (see
	// guarded).
	view dmaView

	mac macState
}

// iova translates a guest buffer for the NIC and records, in *holds, the
// region it lies in (UnmapRegion stops only channels holding buffers there).
// The per-frame loops (collectWritable, directTx) do the same with the
// hinted region tried inline first.
func (p *Channel) iova(b []byte, holds *uint64) (uint64, bool) {
	iova, slot, ok := p.view.iovaOf(b)
	*holds |= slot
	return iova, ok
}

// NewChannel binds cfg.NIC to the guest's queue pair. The NIC queues start
// when the guest has posted receive buffers (RX) or transmits (TX).
func NewChannel(cfg ChannelConfig) (*Channel, error) {
	switch {
	case cfg.Device == nil || cfg.NIC == nil || cfg.DMA == nil:
		return nil, errors.New("engine: channel needs a vhost device, a NIC queue pair and the guest's GuestDMA hook")
	case cfg.CopyPool == nil || cfg.CopyPool.BufSize() < 2048:
		return nil, errors.New("engine: channel needs a DMA-mapped copy pool of buffers of at least 2048 bytes")
	case cfg.Pair < 0 || cfg.Pair >= cfg.Device.QueuePairs():
		return nil, fmt.Errorf("engine: queue pair %d out of range (device has %d)", cfg.Pair, cfg.Device.QueuePairs())
	}
	if cfg.Burst <= 0 {
		cfg.Burst = 32
	}
	if cfg.TxCompleteBatch <= 0 {
		cfg.TxCompleteBatch = 32
	}
	if cfg.Name == "" {
		cfg.Name = fmt.Sprintf("%s/%d", cfg.Device.Name(), cfg.Pair)
	}
	p := &Channel{cfg: cfg, dev: cfg.Device, nic: cfg.NIC, rxq: cfg.NIC.Rx(), txq: cfg.NIC.Tx(),
		dma: cfg.DMA, pool: cfg.CopyPool}
	// The queues start when the guest is ready: stop them now (they are
	// empty, so there is nothing to drain).
	if err := errors.Join(cfg.NIC.StopRx(), cfg.NIC.StopTx()); err != nil {
		return nil, fmt.Errorf("engine: stopping the NIC queues of channel %s: %w", cfg.Name, err)
	}
	if c, err := cfg.NIC.DrainRx(nil); err != nil || len(c) != 0 {
		return nil, fmt.Errorf("engine: NIC RX queue of channel %s holds %d buffers of another owner (%v)", cfg.Name, len(c), err)
	}
	if c, err := cfg.NIC.DrainTx(nil); err != nil || len(c) != 0 {
		return nil, fmt.Errorf("engine: NIC TX queue of channel %s holds %d packets of another owner (%v)", cfg.Name, len(c), err)
	}
	rxCap := cfg.NIC.RxCapacity()
	p.rx.init(cfg.Burst, rxCap)
	p.tx.init(cfg.Burst, cfg.NIC.TxFree()+1)
	p.drain = make([]ring.Cookie, 0, rxCap+cfg.NIC.TxFree()+1)
	if err := p.mac.init(cfg.MACFilter, cfg.GuestMAC, cfg.FollowGuestMAC); err != nil {
		return nil, fmt.Errorf("engine: channel %s: %w", cfg.Name, err)
	}
	p.dev.LockDataPath()
	p.dma.attach(p)
	p.dev.UnlockDataPath()
	return p, nil
}

// Name labels the task.
func (p *Channel) Name() string { return "channel:" + p.cfg.Name }

// Stats returns the channel's totals; safe from any goroutine that does
// not hold the data-path lock, which it takes for the moment of reading
// (as Err does).
func (p *Channel) Stats() Stats {
	p.dev.LockDataPath()
	defer p.dev.UnlockDataPath()
	return p.st.read(p.rx.frames)
}

// Err reports why the channel stopped working (a NIC queue that failed to
// start or stop), nil while it works.
func (p *Channel) Err() error {
	p.dev.LockDataPath()
	defer p.dev.UnlockDataPath()
	return p.failed
}

// Poll does one burst of work in each direction and returns the number of
// frames moved. It allocates nothing.
//
// A fault on guest memory that the front end took away is contained (see
// contain): that channel stops, the guest's session is dropped, and Poll
// returns normally, so the other channels of the lcore keep running. Any
// other panic (a bug) propagates: the lcore records it and stops; the
// data-path lock is released and the channel marked failed on the way out,
// so that the guest's protocol goroutine and Close can still stop the NIC
// queues instead of waiting for the lock forever.
func (p *Channel) Poll() int {
	p.dev.LockDataPath()
	defer p.dev.UnlockDataPath()
	return p.guarded((*Channel).pollLocked)
}

// guarded runs fn, which touches guest memory, with the data-path lock
// held by the caller, and contains a fault on the guest's memory (see
// contain). Any other panic marks the channel failed and propagates. fn is
// a function of the channel rather than a closure so that Poll allocates
// nothing.
func (p *Channel) guarded(fn func(*Channel) int) int {
	p.view.load(p.dma)
	prev := memfault.Enable()
	completed := false
	defer func() {
		memfault.Restore(prev)
		if !completed {
			if v := recover(); !p.contain(v) {
				p.failed = fmt.Errorf("engine: channel %s: a poll round panicked; the channel is stopped (restart zcnet and report the panic)", p.cfg.Name)
				panic(v)
			}
		}
	}()
	n := fn(p)
	completed = true
	return n
}

// contain handles v, a value recovered from a panic of the channel's code
// (nil after runtime.Goexit), if it is a fault on this guest's memory, and
// reports whether it was. A front end can truncate the file behind its
// memory at any moment (a hugetlbfs file cannot be sealed, and a region
// may be reachable through another path); the next access faults. The
// channel then stops its NIC queues and takes their buffers back without
// touching guest memory (chains are forgotten, not returned: the ring is
// gone with the memory), has the device drop the session, and stays
// stopped until that session has ended. Every other channel, and the guest's
// next session, carries on. The NIC's DMA is unaffected: VFIO pinned the
// pages when they were mapped, so writes in flight land in pages the file
// no longer has, and the IOMMU mappings go when the memory table does.
//
// contain must leave the channel's accounting of host buffers exact whatever
// guest memory access faulted: the paths return a host buffer to the pool
// only after their last guest memory access (see deliverCopy), and TX
// copy records are swept (resetTxRecords).
func (p *Channel) contain(v any) bool {
	f, ok := memfault.FromPanic(v)
	if !ok || (!p.dma.owns(f.Addr) && !p.dev.InDirtyLog(f.Addr)) {
		return false
	}
	p.st.add(cGuestMemoryFaults, 1)
	p.faulted = fmt.Errorf("engine: channel %s: %w", p.cfg.Name, f)
	p.faultSession = p.dev.Session()
	var errs []error
	if p.rxRunning {
		errs = append(errs, p.quiesceRx(nil))
	}
	if p.txRunning {
		errs = append(errs, p.quiesceTx(nil))
	}
	if !p.txRunning {
		p.resetTxRecords()
	}
	if err := errors.Join(errs...); err != nil {
		p.failed = fmt.Errorf("engine: channel %s: stopping the NIC queues after a guest memory fault: %w", p.cfg.Name, err)
	}
	p.dev.Drop(fmt.Errorf("%w (channel %s, %w)", vhost.ErrGuestMemoryFault, p.cfg.Name, f))
	return true
}

func (p *Channel) pollLocked() int {
	if p.failed != nil {
		return 0
	}
	if p.faulted != nil {
		if p.dev.Session() == p.faultSession {
			return 0
		}
		// The session whose memory went away has ended: serve the next.
		p.faulted = nil
	}
	rxv, txv := p.dev.RxQueue(p.cfg.Pair), p.dev.TxQueue(p.cfg.Pair)
	// A ring the device no longer hands out without the ring hook telling
	// us (broken by a guest error, its pair deactivated; a front end's
	// stop always calls the hook, which clears p.rxv or p.txv): the NIC
	// queue gives its buffers back to that ring before it serves another.
	if rxv != p.rxv {
		if p.rxRunning {
			if err := p.quiesceRx(p.rxv); err != nil {
				p.failed = err
				return 0
			}
		}
		p.rxv = rxv
	}
	if txv != p.txv {
		if p.txRunning {
			if err := p.quiesceTx(p.txv); err != nil {
				p.failed = err
				return 0
			}
		}
		p.txv = txv
	}
	n := 0
	if txv != nil {
		if !p.txRunning {
			p.startTx()
		}
		if p.txRunning {
			n += p.pollTx()
		}
	}
	if rxv != nil {
		if !p.rxRunning && rxv.Avail() > 0 {
			p.startRx()
		}
		if p.rxRunning {
			n += p.pollRx()
		}
	}
	if n > 0 {
		p.st.add(cBusyPolls, 1)
	} else {
		p.st.add(cIdlePolls, 1)
	}
	return n
}

// negotiated reads the guest's features when a queue starts.
func (p *Channel) negotiated() {
	p.features = p.dev.Features()
	p.hdrLen = p.dev.NetHeaderLen()
	p.dataValid = dataValidMask(p.features)
}

// dataValidMask is Channel.dataValid for a guest with features.
func dataValidMask(features uint64) uint16 {
	if features&vhost.NetFGuestCsum == 0 {
		return 0
	}
	var m uint16
	for v := range 16 {
		d := ring.RxDone{Flags: ring.RxFlags(v) << ring.RxIPCsumShift}
		if d.L4Csum() == ring.CsumGood && d.IPCsum() != ring.CsumBad {
			m |= 1 << v
		}
	}
	return m
}

// rxHeaderFlags is the virtio-net header flags byte for a received frame
// whose last completion has flags f: DATA_VALID or nothing.
func (p *Channel) rxHeaderFlags(f ring.RxFlags) uint64 {
	return uint64(p.dataValid>>(f>>ring.RxIPCsumShift&0xF)&1) * vhost.NetHdrFDataValid
}

// quiesce stops the channel's NIC queues, takes back every buffer they held
// and returns the guest chains the channel owned to the guest's rings (a
// ring the front end stopped is no longer the channel's: the hook took its
// chains back then). Called with the data-path lock held. The queues
// start again on a later Poll.
func (p *Channel) quiesce() error {
	var errs []error
	if p.rxRunning {
		errs = append(errs, p.quiesceRx(p.rxv))
	}
	if p.txRunning {
		errs = append(errs, p.quiesceTx(p.txv))
	}
	return errors.Join(errs...)
}

// stopRing is the channel's part of vhost.RingHook (data-path lock held by
// the device): if q is one of the channel's rings, the NIC queue serving it
// finishes what it completed, stops, and every chain of q goes back to q's
// used ring before this returns.
func (p *Channel) stopRing(q *vhost.Virtqueue) {
	p.guarded(func(*Channel) int { p.stopRingLocked(q); return 0 })
}

func (p *Channel) stopRingLocked(q *vhost.Virtqueue) {
	var err error
	switch {
	case q == nil:
		return
	case q == p.rxv:
		if p.rxRunning && p.failed == nil {
			// Frames the NIC already wrote are delivered, not dropped.
			p.harvestRx()
			p.deliverPending()
			err = p.quiesceRx(q)
		}
		p.rxv = nil
	case q == p.txv:
		if p.txRunning && p.failed == nil {
			err = p.quiesceTx(q)
		}
		p.txv = nil
	default:
		return
	}
	if err != nil {
		p.failed = fmt.Errorf("engine: channel %s: stopping the NIC queue of vring %d: %w", p.cfg.Name, q.Index(), err)
	}
}

// letGo stops the directions of the channel that hold a guest buffer in the
// region with slot bit slot (GuestDMA.UnmapRegion, without the data-path
// lock held).
func (p *Channel) letGo(slot uint64) error {
	p.dev.LockDataPath()
	defer p.dev.UnlockDataPath()
	var errs []error
	p.guarded(func(*Channel) int {
		if p.rxRunning && p.rx.holds&slot != 0 {
			errs = append(errs, p.quiesceRx(p.rxv))
		}
		if p.txRunning && p.tx.holds&slot != 0 {
			errs = append(errs, p.quiesceTx(p.txv))
		}
		return 0
	})
	return errors.Join(errs...)
}

// Close stops the channel's NIC queues, gives guest buffers back and detaches
// the channel from the guest's memory hook. The pool stays the caller's.
func (p *Channel) Close() error {
	p.dev.LockDataPath()
	defer p.dev.UnlockDataPath()
	var err error
	p.guarded(func(*Channel) int { err = p.quiesce(); return 0 })
	p.dma.detach(p)
	// A closed channel needs no address: one left in the NIC's filter would
	// take frames no one receives (and fill the table as guests come and
	// go).
	err = errors.Join(err, p.mac.drop())
	p.failed = ErrClosed
	return err
}
