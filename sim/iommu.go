package sim

import (
	"fmt"
	"os"
	"sort"
	"sync"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// IOMMU is the device's DMA translation domain (vfio.DMAMapper). The model
// reaches memory only through mappings made here; anything else is a fault,
// counted with the faulting IOVA, exactly where silicon behind a real IOMMU
// would raise a DMAR fault. A faulting access never touches memory.
type IOMMU struct {
	// mu is held for reading by an engine for the whole of a batch of DMA
	// and for writing by MapDMA/UnmapDMA, so memory is never unmapped under
	// an access in progress.
	mu   sync.RWMutex
	maps []mapping // sorted by iova, non-overlapping

	faults    atomic.Uint64
	lastFault atomic.Uint64
}

type mapping struct {
	iova uint64
	mem  []byte
}

func (m *mapping) end() uint64 { return m.iova + uint64(len(m.mem)) }

var pageSize = uint64(os.Getpagesize())

// MapDMA makes mem reachable at iova. Like the kernel's type1 IOMMU, it
// refuses unaligned arguments (EINVAL) and any overlap with an existing
// mapping (EEXIST).
func (u *IOMMU) MapDMA(iova uint64, mem []byte) error {
	size := uint64(len(mem))
	if size == 0 || iova%pageSize != 0 || size%pageSize != 0 ||
		uint64(addressOf(mem))%pageSize != 0 {
		return fmt.Errorf("sim: map %d bytes at iova %#x: iova, size and address must be page aligned: %w", size, iova, unix.EINVAL)
	}
	if iova+size < iova {
		return fmt.Errorf("sim: map %d bytes at iova %#x: range wraps: %w", size, iova, unix.EINVAL)
	}
	u.mu.Lock()
	defer u.mu.Unlock()
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
	u.mu.Lock()
	defer u.mu.Unlock()
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

// Faults reports how many device accesses fell outside every mapping, and
// the IOVA of the last one.
func (u *IOMMU) Faults() (count uint64, lastIOVA uint64) {
	return u.faults.Load(), u.lastFault.Load()
}

func (u *IOMMU) fault(iova uint64) {
	u.lastFault.Store(iova)
	u.faults.Add(1)
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
	b, ok := u.lookup(iova, n)
	if !ok {
		u.fault(iova)
	}
	return b, ok
}

// dmaWrite copies src to iova, across adjacent mappings if needed. It
// checks the whole range before writing anything, so a fault writes nothing.
func (u *IOMMU) dmaWrite(iova uint64, src []byte) bool {
	if b, ok := u.lookup(iova, len(src)); ok {
		copy(b, src)
		return true
	}
	if !u.covered(iova, len(src)) {
		return false
	}
	for len(src) > 0 {
		n := copy(u.prefix(iova, len(src)), src)
		src = src[n:]
		iova += uint64(n)
	}
	return true
}

// dmaRead copies from iova into dst, across adjacent mappings if needed.
func (u *IOMMU) dmaRead(iova uint64, dst []byte) bool {
	if b, ok := u.lookup(iova, len(dst)); ok {
		copy(dst, b)
		return true
	}
	if !u.covered(iova, len(dst)) {
		return false
	}
	for len(dst) > 0 {
		n := copy(dst, u.prefix(iova, len(dst)))
		dst = dst[n:]
		iova += uint64(n)
	}
	return true
}

// covered reports whether every byte of [iova, iova+n) is mapped, and
// records a fault at the first unmapped byte if not.
func (u *IOMMU) covered(iova uint64, n int) bool {
	end := iova + uint64(n)
	for iova < end {
		b := u.prefix(iova, int(end-iova))
		if b == nil {
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
