package sim

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// IOMMU is the device's DMA translation domain (vfio.DMAMapper). The model
// reaches memory only through mappings made here; anything else is a fault,
// counted with the faulting IOVA, exactly where silicon behind a real IOMMU
// would raise a DMAR fault. A faulting access never touches memory.
//
// Memory behind a mapping can also vanish from under the model in a way
// it cannot on silicon: a vhost-user front end that ftruncates the memfd
// of its guest memory after it was mapped makes the next touch of those
// pages raise SIGBUS. VFIO pins the pages at map time, so a real NIC goes
// on DMAing to the orphaned pinned pages and nothing faults. The model
// does the same: such a write is lost, such a read yields zeros, and the
// access is counted apart (OrphanAccesses), not as an IOMMU fault.
type IOMMU struct {
	// mu is held for reading by an engine for the whole of a batch of DMA
	// and for writing by MapDMA/UnmapDMA, so memory is never unmapped under
	// an access in progress.
	mu   sync.RWMutex
	maps []mapping // sorted by iova, non-overlapping
	// shared, when set, is the lock used in place of mu: a VF's domain
	// shares its PF's, so the engines' one read lock covers every domain
	// (sriov.go).
	shared *sync.RWMutex

	faults    atomic.Uint64
	lastFault atomic.Uint64

	orphans    atomic.Uint64
	lastOrphan atomic.Uint64

	// Injected faults (PF.FailDMA, PF.FailDMARange). failing is the one
	// check an access makes when none are injected.
	failing  atomic.Bool
	failMu   sync.Mutex
	failLeft uint64 // accesses still to fail
	failLo   uint64 // [failLo, failHi): a range that fails
	failHi   uint64
	injected atomic.Uint64
}

type mapping struct {
	iova uint64
	mem  []byte
}

func (m *mapping) end() uint64 { return m.iova + uint64(len(m.mem)) }

var pageSize = uint64(os.Getpagesize())

// MapDMA makes mem reachable at iova. Like the kernel's type1 IOMMU, it
// refuses unaligned arguments (EINVAL) and any overlap with an existing
// mapping (EEXIST). Like VFIO's pinning, it faults in the pages mem's
// backing holds (see faultIn).
func (u *IOMMU) MapDMA(iova uint64, mem []byte) error {
	size := uint64(len(mem))
	if size == 0 || iova%pageSize != 0 || size%pageSize != 0 ||
		uint64(addressOf(mem))%pageSize != 0 {
		return fmt.Errorf("sim: map %d bytes at iova %#x: iova, size and address must be page aligned: %w", size, iova, unix.EINVAL)
	}
	if iova+size < iova {
		return fmt.Errorf("sim: map %d bytes at iova %#x: range wraps: %w", size, iova, unix.EINVAL)
	}
	faultIn(mem) // before the lock: DMA goes on meanwhile
	l := u.lock()
	l.Lock()
	defer l.Unlock()
	i := sort.Search(len(u.maps), func(i int) bool { return u.maps[i].end() > iova })
	if i < len(u.maps) && u.maps[i].iova < iova+size {
		return fmt.Errorf("sim: map [%#x, %#x): overlaps mapping at %#x: %w", iova, iova+size, u.maps[i].iova, unix.EEXIST)
	}
	u.maps = append(u.maps, mapping{})
	copy(u.maps[i+1:], u.maps[i:])
	u.maps[i] = mapping{iova: iova, mem: mem}
	return nil
}

// UnmapDMA removes the mapping made with the same iova and size. It waits
// for DMA batches in progress, so after it returns the device no longer
// touches the memory.
func (u *IOMMU) UnmapDMA(iova uint64, size uint64) error {
	l := u.lock()
	l.Lock()
	defer l.Unlock()
	for i := range u.maps {
		if u.maps[i].iova == iova {
			if uint64(len(u.maps[i].mem)) != size {
				return fmt.Errorf("sim: unmap iova %#x: size %d does not match the mapping's %d: %w", iova, size, len(u.maps[i].mem), unix.EINVAL)
			}
			u.maps = append(u.maps[:i], u.maps[i+1:]...)
			return nil
		}
	}
	return fmt.Errorf("sim: unmap iova %#x: no mapping starts there: %w", iova, unix.ENOENT)
}

// lock is the lock that guards maps against DMA in progress.
func (u *IOMMU) lock() *sync.RWMutex {
	if u.shared != nil {
		return u.shared
	}
	return &u.mu
}

// Faults reports how many device accesses fell outside every mapping, and
// the IOVA of the last one.
func (u *IOMMU) Faults() (count uint64, lastIOVA uint64) {
	return u.faults.Load(), u.lastFault.Load()
}

func (u *IOMMU) fault(iova uint64) {
	u.lastFault.Store(iova)
	u.faults.Add(1)
}

// InjectedFaults reports how many of the faults Faults counts were
// injected (PF.FailDMA, PF.FailDMARange) rather than real.
func (u *IOMMU) InjectedFaults() uint64 { return u.injected.Load() }

func (u *IOMMU) failNext(n uint64) {
	u.failMu.Lock()
	u.failLeft = n
	u.armLocked()
	u.failMu.Unlock()
}

func (u *IOMMU) failRange(iova, size uint64) {
	u.failMu.Lock()
	u.failLo, u.failHi = iova, iova+size
	if u.failHi < u.failLo {
		u.failHi = ^uint64(0) // the range runs to the top of the IOVA space
	}
	u.armLocked()
	u.failMu.Unlock()
}

func (u *IOMMU) armLocked() { u.failing.Store(u.failLeft != 0 || u.failHi > u.failLo) }

// injectedFault reports whether an injected fault fails the access to
// [iova, iova+n); it counts the fault, at the first failing byte, as an
// access outside every mapping would be counted.
func (u *IOMMU) injectedFault(iova uint64, n int) bool {
	return u.failing.Load() && u.inject(iova, n)
}

func (u *IOMMU) inject(iova uint64, n int) bool {
	u.failMu.Lock()
	at, hit := iova, false
	switch {
	case u.failLeft != 0:
		u.failLeft--
		hit = true
	case iova < u.failHi && iova+uint64(n) > u.failLo:
		at, hit = max(iova, u.failLo), true
	}
	u.armLocked()
	u.failMu.Unlock()
	if hit {
		u.injected.Add(1)
		u.fault(at)
	}
	return hit
}

// OrphanAccesses reports how many device accesses found the host memory
// behind a mapping gone (the file behind it truncated after MapDMA), and
// the IOVA where the last one started. Real VFIO would have pinned that
// memory, so on silicon these accesses succeed; they are not IOMMU faults.
func (u *IOMMU) OrphanAccesses() (count uint64, lastIOVA uint64) {
	return u.orphans.Load(), u.lastOrphan.Load()
}

func (u *IOMMU) orphan(iova uint64) {
	u.lastOrphan.Store(iova)
	u.orphans.Add(1)
}

// store copies src into dst, mapped memory at iova, as DMA into pinned
// pages: if the host memory went away the write is lost and counted.
func (u *IOMMU) store(iova uint64, dst, src []byte) {
	if !copyPinned(dst, src) {
		u.orphan(iova)
	}
}

// load copies src, mapped memory at iova, into dst. If the host memory
// went away dst reads as zeros, what the model knows of orphaned pages.
func (u *IOMMU) load(iova uint64, dst, src []byte) {
	if !copyPinned(dst, src) {
		clear(dst)
		u.orphan(iova)
	}
}

// copyPinned copies src to dst and reports false if the copy touched
// memory that is no longer there (SIGBUS on a truncated shared file).
// Without SetPanicOnFault such a fault kills the whole process; with it
// the runtime panics with an error carrying the faulting address, which
// is recovered here. Any other panic is not ours to swallow.
func copyPinned(dst, src []byte) (ok bool) {
	prev := debug.SetPanicOnFault(true)
	defer func() {
		debug.SetPanicOnFault(prev)
		if ok {
			return
		}
		if v := recover(); !memoryFault(v) {
			panic(v)
		}
	}()
	copy(dst, src)
	return true
}

// memoryFault reports whether v, recovered under SetPanicOnFault, is the
// runtime's error for a faulting memory access.
func memoryFault(v any) bool {
	_, fault := v.(interface {
		runtime.Error
		Addr() uintptr
	})
	return fault
}

// find returns the index of the mapping containing iova, or -1. Callers
// hold mu for reading.
func (u *IOMMU) find(iova uint64) int {
	maps := u.maps
	lo, hi := 0, len(maps)
	for lo < hi {
		mid := int(uint(lo+hi) >> 1)
		if maps[mid].end() <= iova {
			lo = mid + 1
		} else {
			hi = mid
		}
	}
	if lo == len(maps) || maps[lo].iova > iova {
		return -1
	}
	return lo
}

// lookup returns the memory behind [iova, iova+n) when one mapping covers
// all of it.
func (u *IOMMU) lookup(iova uint64, n int) ([]byte, bool) {
	i := u.find(iova)
	if i < 0 {
		return nil, false
	}
	off := iova - u.maps[i].iova
	if off+uint64(n) > uint64(len(u.maps[i].mem)) {
		return nil, false
	}
	return u.maps[i].mem[off : off+uint64(n) : off+uint64(n)], true
}

// slice is lookup that records a fault when the range is not mapped. It
// serves descriptor accesses, which never span two mappings on silicon
// either (rings are contiguous and 128-byte aligned).
func (u *IOMMU) slice(iova uint64, n int) ([]byte, bool) {
	if u.injectedFault(iova, n) {
		return nil, false
	}
	b, ok := u.lookup(iova, n)
	if !ok {
		u.fault(iova)
	}
	return b, ok
}

// dmaWrite copies src to iova, across adjacent mappings if needed. It
// checks the whole range before writing anything, so a fault writes nothing.
// Mapped memory whose host pages went away takes the write as orphaned
// pinned pages would: it succeeds and the data is lost.
func (u *IOMMU) dmaWrite(iova uint64, src []byte) bool {
	if u.injectedFault(iova, len(src)) {
		return false
	}
	if b, ok := u.lookup(iova, len(src)); ok {
		u.store(iova, b, src)
		return true
	}
	if !u.covered(iova, len(src)) {
		return false
	}
	for len(src) > 0 {
		b := u.prefix(iova, len(src))
		u.store(iova, b, src)
		src = src[len(b):]
		iova += uint64(len(b))
	}
	return true
}

// dmaRead copies from iova into dst, across adjacent mappings if needed.
// Mapped memory whose host pages went away reads as zeros.
func (u *IOMMU) dmaRead(iova uint64, dst []byte) bool {
	if u.injectedFault(iova, len(dst)) {
		return false
	}
	if b, ok := u.lookup(iova, len(dst)); ok {
		u.load(iova, dst, b)
		return true
	}
	if !u.covered(iova, len(dst)) {
		return false
	}
	for len(dst) > 0 {
		b := u.prefix(iova, len(dst))
		u.load(iova, dst[:len(b)], b)
		dst = dst[len(b):]
		iova += uint64(len(b))
	}
	return true
}

// covered reports whether every byte of [iova, iova+n) is mapped, and
// records a fault at the first unmapped byte if not.
func (u *IOMMU) covered(iova uint64, n int) bool {
	end := iova + uint64(n)
	for iova < end {
		b := u.prefix(iova, int(end-iova))
		if len(b) == 0 { // unmapped; an empty run would also never advance
			u.fault(iova)
			return false
		}
		iova += uint64(len(b))
	}
	return true
}

// prefix returns the longest mapped run (at most n bytes) starting at iova,
// or nil when iova itself is unmapped.
func (u *IOMMU) prefix(iova uint64, n int) []byte {
	i := u.find(iova)
	if i < 0 {
		return nil
	}
	rest := u.maps[i].mem[iova-u.maps[i].iova:]
	if len(rest) > n {
		rest = rest[:n]
	}
	return rest
}
