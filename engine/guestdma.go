package engine

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/vfio"
	"github.com/zcnet/zcnet/vhost"
)

// GuestDMA makes one guest's memory reachable by a NIC: it is the vhost
// device's MemoryHook, DMA-mapping every guest memory region into the NIC's
// IOMMU domain when the memory table arrives (each region at an IOVA of its
// own from the domain's allocator) and unmapping it when the table goes
// away, but only after every channel holding a buffer in it has stopped its
// NIC queues and taken the buffers back: a region is never unmapped while
// the device may still write into it.
//
// It is also the device's vhost.RingHook: when the front end stops a ring
// (GET_VRING_BASE, SET_VRING_ENABLE 0, reset, disconnect, new memory
// table), the channel using that ring stops its NIC queue and gives every
// guest buffer back before the device replies.
//
// Set it as vhost.Config.Hook of the device before the front end connects,
// and create the guest's Channels with it.
//
// Locking protocol (three parties: the protocol goroutine of the vhost
// device, the lcore polling the channel, and this hook):
//   - A Channel touches its state only with the device's data-path lock held
//     (Poll takes it around one round).
//   - StopRing is called by the device with the data-path lock held, so it
//     runs between two polling rounds and drains synchronously; it takes
//     g.mu (order: data-path lock, then g.mu; NewChannel and Close follow the
//     same order).
//   - MapRegion and UnmapRegion are called without the data-path lock. The
//     region list is copy-on-write behind an atomic pointer, so the poller
//     reads it without a lock while a new region is added. UnmapRegion
//     takes g.mu only to copy the channel list, releases it, and then takes
//     each channel's data-path lock to stop the channels that still hold a buffer
//     in the region (normally none: StopRing already drained them).
type GuestDMA struct {
	mapper vfio.DMAMapper
	iova   *hugepage.IOVAAllocator
	// memlock reports the process's locked memory and RLIMIT_MEMLOCK when
	// mapper pins what it maps (VFIO does; the simulator's IOMMU does
	// not); nil when nothing is pinned.
	memlock func() (memlockState, error)

	regions atomic.Pointer[[]dmaRegion] // immutable snapshots

	mu       sync.Mutex // guards channels, slots and region updates
	channels []*Channel
	slots    uint64 // region slot bits in use
}

// dmaRegion is one mapped guest region: host range [host, host+size) is
// reachable by the device at iova. slot is a bit of its own among the
// guest's regions, which channels accumulate to remember where their posted
// buffers lie.
type dmaRegion struct {
	host, size, iova uint64
	gpa              uint64
	slot             uint64
}

// NewGuestDMA returns the memory hook of one guest whose buffers go to
// devices behind mapper; IOVAs come from alloc, the allocator of that
// IOMMU domain (shared with the NIC driver's rings, so they cannot collide).
func NewGuestDMA(mapper vfio.DMAMapper, alloc *hugepage.IOVAAllocator) *GuestDMA {
	g := &GuestDMA{mapper: mapper, iova: alloc}
	if _, ok := mapper.(*vfio.Container); ok {
		g.memlock = readMemlock
	}
	g.regions.Store(&[]dmaRegion{})
	return g
}

var (
	_ vhost.MemoryHook = (*GuestDMA)(nil)
	_ vhost.RingHook   = (*GuestDMA)(nil)
)

// MapRegion DMA-maps a new guest region.
func (g *GuestDMA) MapRegion(r vhost.Region) error {
	if len(r.Host) == 0 || addrOf(r.Host)%hugepage.IOMMUPage != 0 || r.Size%hugepage.IOMMUPage != 0 {
		return fmt.Errorf("engine: guest region gpa %#x size %#x is not page aligned in this process; the IOMMU maps whole pages (back guest memory with page-aligned memfd or hugetlbfs offsets)", r.GuestPhysAddr, r.Size)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.slots == ^uint64(0) {
		return fmt.Errorf("engine: guest region gpa %#x: 64 regions already DMA-mapped for this guest; the front end must remove regions first", r.GuestPhysAddr)
	}
	slot := uint64(1) << bits.TrailingZeros64(^g.slots)
	iova, err := g.iova.Alloc(r.Size, hugepage.IOMMUPage)
	if err != nil {
		return fmt.Errorf("engine: IOVA space for guest region gpa %#x size %#x: %w", r.GuestPhysAddr, r.Size, err)
	}
	if err := g.pin(iova, r); err != nil {
		_ = g.iova.Free(iova)
		return err
	}
	g.slots |= slot
	old := *g.regions.Load()
	next := append(append(make([]dmaRegion, 0, len(old)+1), old...),
		dmaRegion{host: uint64(addrOf(r.Host)), size: r.Size, iova: iova, gpa: r.GuestPhysAddr, slot: slot})
	g.regions.Store(&next)
	return nil
}

// pinMu makes the RLIMIT_MEMLOCK check and the pinning it allows one step
// for every guest of the process: the limit is the process's, so two
// guests mapping at once must not both fit in the same headroom.
var pinMu sync.Mutex

// pin DMA-maps region r at iova. When the mapper pins (VFIO), the region
// must first fit under RLIMIT_MEMLOCK together with everything the process
// has locked already (every guest's memory and the NIC rings): the kernel
// would refuse too, but only after pinning page by page up to the limit,
// and with an ENOMEM that does not say which guest asked for how much.
func (g *GuestDMA) pin(iova uint64, r vhost.Region) error {
	if g.memlock != nil {
		pinMu.Lock()
		defer pinMu.Unlock()
		st, err := g.memlock()
		if err != nil {
			return fmt.Errorf("engine: guest region gpa %#x: checking the locked-memory limit before pinning it: %w", r.GuestPhysAddr, err)
		}
		if st.enforced && (r.Size > st.limit || st.locked > st.limit-r.Size) {
			return fmt.Errorf("engine: guest region gpa %#x of %d bytes refused: pinning it for DMA would lock %d bytes in this process, over RLIMIT_MEMLOCK of %d (%d already locked for the NICs and other guests); raise the limit (ulimit -l, LimitMEMLOCK=), run with CAP_IPC_LOCK or cap guest memory lower (--vhost-mem-limit)",
				r.GuestPhysAddr, r.Size, st.locked+r.Size, st.limit, st.locked)
		}
	}
	if err := g.mapper.MapDMA(iova, r.Host); err != nil {
		return fmt.Errorf("engine: DMA-map guest region gpa %#x at IOVA %#x: %w", r.GuestPhysAddr, iova, err)
	}
	return nil
}

// memlockState is what VFIO checks a pin against: the bytes the process
// has locked (VFIO counts its pins in locked_vm, /proc's VmLck), the
// RLIMIT_MEMLOCK soft limit, and whether it applies (not with
// CAP_IPC_LOCK, nor when unlimited).
type memlockState struct {
	locked, limit uint64
	enforced      bool
}

// capIPCLock is CAP_IPC_LOCK's bit in the capability sets.
const capIPCLock = 14

func readMemlock() (memlockState, error) {
	var rl unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_MEMLOCK, &rl); err != nil {
		return memlockState{}, fmt.Errorf("getrlimit RLIMIT_MEMLOCK: %w", err)
	}
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return memlockState{}, fmt.Errorf("reading locked memory: %w", err)
	}
	st := memlockState{limit: rl.Cur, enforced: rl.Cur != unix.RLIM_INFINITY}
	var haveLck, haveCap bool
	for _, line := range strings.Split(string(b), "\n") {
		key, val, ok := strings.Cut(line, ":")
		if !ok {
			continue
		}
		val = strings.TrimSpace(val)
		switch key {
		case "VmLck": // "123 kB"
			kb, err := strconv.ParseUint(strings.TrimSuffix(val, " kB"), 10, 64)
			if err != nil {
				return memlockState{}, fmt.Errorf("parsing VmLck %q in /proc/self/status: %w", val, err)
			}
			st.locked, haveLck = kb<<10, true
		case "CapEff":
			caps, err := strconv.ParseUint(val, 16, 64)
			if err != nil {
				return memlockState{}, fmt.Errorf("parsing CapEff %q in /proc/self/status: %w", val, err)
			}
			if caps&(1<<capIPCLock) != 0 {
				st.enforced = false
			}
			haveCap = true
		}
	}
	if !haveLck || !haveCap {
		return memlockState{}, errors.New("/proc/self/status has no VmLck or CapEff line")
	}
	return st, nil
}

// UnmapRegion stops every channel that holds a buffer in the region (their
// NIC queues are stopped and each posted guest buffer taken back) and then
// unmaps it. If a NIC queue does not confirm it stopped, the region stays
// mapped, which leaks IOVA space but never lets the device write into
// freed memory.
func (g *GuestDMA) UnmapRegion(r vhost.Region) error {
	if len(r.Host) == 0 {
		return nil
	}
	host := uint64(addrOf(r.Host))
	g.mu.Lock()
	m, ok := g.find(host, r.Size)
	channels := append([]*Channel(nil), g.channels...)
	g.mu.Unlock()
	if !ok {
		return nil // never mapped (MapRegion failed for it)
	}
	var errs []error
	for _, p := range channels {
		errs = append(errs, p.letGo(m.slot))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("engine: guest region gpa %#x left DMA-mapped: a NIC queue did not stop: %w", r.GuestPhysAddr, err)
	}
	if err := g.mapper.UnmapDMA(m.iova, m.size); err != nil {
		return fmt.Errorf("engine: DMA-unmap guest region gpa %#x at IOVA %#x: %w", m.gpa, m.iova, err)
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	old := *g.regions.Load()
	next := make([]dmaRegion, 0, len(old))
	for _, o := range old {
		if o.slot != m.slot {
			next = append(next, o)
		}
	}
	g.regions.Store(&next)
	g.slots &^= m.slot
	return g.iova.Free(m.iova)
}

func (g *GuestDMA) find(host, size uint64) (dmaRegion, bool) {
	for _, m := range *g.regions.Load() {
		if m.host == host && m.size == size {
			return m, true
		}
	}
	return dmaRegion{}, false
}

// StopRing is the vhost.RingHook: the channel using q stops the NIC queue
// that holds q's buffers and gives them back before the device goes on
// (data-path lock held by the device).
func (g *GuestDMA) StopRing(q *vhost.Virtqueue) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for _, p := range g.channels {
		p.stopRing(q)
	}
}

// Mapped reports how many guest regions are DMA-mapped; safe from any
// goroutine.
func (g *GuestDMA) Mapped() int { return len(*g.regions.Load()) }

// dmaView is a channel's view of the guest's DMA regions for one polling
// round: the snapshot, loaded once with the data-path lock held, and the
// region the last buffer lay in, tried first (a guest's buffers nearly
// always come from one region). Loading the snapshot after the lock is
// taken sees every region a ring can hand a buffer from: the device maps
// a region before it swaps the memory table in, with the lock held.
type dmaView struct {
	regions []dmaRegion
	hint    int
}

// load takes the current snapshot of g's regions.
func (v *dmaView) load(g *GuestDMA) { v.regions = *g.regions.Load() }

// iovaOf translates guest memory b (a slice the virtqueue produced from
// the memory table, hence already validated against it) to the IOVA the
// device reaches it at, and the region's slot bit. It reports false if b
// is not inside one mapped region, which the caller treats as an unusable
// buffer.
func (v *dmaView) iovaOf(b []byte) (iova, slot uint64, ok bool) {
	if iova, slot, ok = v.hinted(b); ok {
		return iova, slot, true
	}
	if len(b) == 0 {
		return 0, 0, false
	}
	a, n := uint64(addrOf(b)), uint64(len(b))
	for i := range v.regions {
		m := &v.regions[i]
		if off := a - m.host; a >= m.host && off < m.size && n <= m.size-off {
			v.hint = i
			return m.iova + off, m.slot, true
		}
	}
	return 0, 0, false
}

// hinted is iovaOf for a buffer in the region the last one lay in, and
// false for any other. It is small enough to be inlined: the per-frame
// loops try it first and call iovaOf only when it fails, as a call there
// costs more than the check (the loop's state is spilled around it).
func (v *dmaView) hinted(b []byte) (iova, slot uint64, ok bool) {
	if i := v.hint; uint(i) < uint(len(v.regions)) && len(b) > 0 {
		// An address below the region wraps off past its size.
		m := &v.regions[i]
		if off := uint64(addrOf(b)) - m.host; off < m.size && uint64(len(b)) <= m.size-off {
			return m.iova + off, m.slot, true
		}
	}
	return 0, 0, false
}

// owns reports whether host address addr lies in one of the guest's
// mapped regions (a fault there is the guest's memory going away, not a
// bug of ours).
func (g *GuestDMA) owns(addr uintptr) bool {
	a := uint64(addr)
	for _, m := range *g.regions.Load() {
		if a >= m.host && a-m.host < m.size {
			return true
		}
	}
	return false
}

func (g *GuestDMA) attach(p *Channel) {
	g.mu.Lock()
	g.channels = append(g.channels, p)
	g.mu.Unlock()
}

func (g *GuestDMA) detach(p *Channel) {
	g.mu.Lock()
	defer g.mu.Unlock()
	for i, q := range g.channels {
		if q == p {
			g.channels = append(g.channels[:i], g.channels[i+1:]...)
			return
		}
	}
}
