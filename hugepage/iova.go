package hugepage

import (
	"errors"
	"fmt"
	"sort"
	"sync"
)

// IOMMUPage is the granule of IOVA space: the smallest page an IOMMU maps,
// and so the smallest size and alignment an IOVAAllocator hands out.
const IOMMUPage = 4 << 10

// The default IOVA window. Starting at 4 GiB keeps every allocation clear of
// the low addresses where platforms reserve ranges (on x86 the MSI window at
// 0xfee00000 is never translated as DMA). 2^39 is the narrowest address width
// IOMMUs commonly offer (VT-d with 3-level tables), so the window fits any of
// them; a caller that knows the domain's real valid ranges may pass another.
const (
	DefaultIOVABase  = 4 << 30
	DefaultIOVALimit = 1 << 39
)

// Errors of the IOVA allocator.
var (
	ErrIOVAExhausted    = errors.New("hugepage: IOVA window exhausted")
	ErrIOVAAlignment    = errors.New("hugepage: bad IOVA alignment")
	ErrIOVANotAllocated = errors.New("hugepage: IOVA was not allocated")
	ErrIOVAInUse        = errors.New("hugepage: IOVA range in use")
)

// span is a half-open range [start, end) of IOVA space.
type span struct{ start, end uint64 }

// IOVAAllocator hands out non-overlapping ranges of one IOMMU domain's I/O
// virtual address space, within the window [base, limit). Allocation happens
// when memory is registered, not per packet, so it keeps a sorted free list
// and takes a lock; it is safe for concurrent use.
type IOVAAllocator struct {
	mu        sync.Mutex
	base      uint64
	limit     uint64
	free      []span            // sorted by start, disjoint, never adjacent
	allocated map[uint64]uint64 // start -> size of each live range
}

// NewIOVAAllocator returns an allocator for the window [base, limit). Both
// ends must be multiples of IOMMUPage.
func NewIOVAAllocator(base, limit uint64) (*IOVAAllocator, error) {
	if base%IOMMUPage != 0 || limit%IOMMUPage != 0 {
		return nil, fmt.Errorf("hugepage: IOVA window [%#x, %#x) is not aligned to %d bytes: %w", base, limit, IOMMUPage, ErrIOVAAlignment)
	}
	if base >= limit {
		return nil, fmt.Errorf("hugepage: IOVA window [%#x, %#x) is empty", base, limit)
	}
	return &IOVAAllocator{
		base:      base,
		limit:     limit,
		free:      []span{{base, limit}},
		allocated: make(map[uint64]uint64),
	}, nil
}

// Window reports the range the allocator hands out from.
func (a *IOVAAllocator) Window() (base, limit uint64) { return a.base, a.limit }

// Alloc reserves size bytes (rounded up to IOMMUPage) at an address that is a
// multiple of align, a power of two of at least IOMMUPage. It takes the
// lowest address that fits.
func (a *IOVAAllocator) Alloc(size, align uint64) (uint64, error) {
	if align < IOMMUPage || align&(align-1) != 0 {
		return 0, fmt.Errorf("hugepage: alignment %#x is not a power of two of at least %#x: %w", align, IOMMUPage, ErrIOVAAlignment)
	}
	size, ok := roundUp(size, IOMMUPage)
	if size == 0 || !ok {
		return 0, fmt.Errorf("hugepage: cannot allocate %#x bytes of IOVA space", size)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for i, s := range a.free {
		start, ok := roundUp(s.start, align)
		if !ok || start >= s.end || s.end-start < size {
			continue
		}
		a.take(i, start, start+size)
		return start, nil
	}
	return 0, fmt.Errorf("hugepage: no %#x-byte IOVA range aligned to %#x left in [%#x, %#x): %w",
		size, align, a.base, a.limit, ErrIOVAExhausted)
}

// Reserve claims the specific range [iova, iova+size), for a mapping whose
// address is dictated from outside (an identity map, a range the platform
// forbids). Release it with Free like any other range.
func (a *IOVAAllocator) Reserve(iova, size uint64) error {
	if iova%IOMMUPage != 0 {
		return fmt.Errorf("hugepage: IOVA %#x is not aligned to %#x: %w", iova, IOMMUPage, ErrIOVAAlignment)
	}
	size, ok := roundUp(size, IOMMUPage)
	if size == 0 || !ok || iova+size < iova {
		return fmt.Errorf("hugepage: cannot reserve %#x bytes of IOVA space at %#x", size, iova)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	// The only free span that can contain the range is the last one starting
	// at or before iova.
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].start > iova }) - 1
	if i < 0 || a.free[i].end < iova+size {
		if iova < a.base || iova+size > a.limit {
			return fmt.Errorf("hugepage: IOVA range [%#x, %#x) lies outside the window [%#x, %#x): %w",
				iova, iova+size, a.base, a.limit, ErrIOVAInUse)
		}
		return fmt.Errorf("hugepage: IOVA range [%#x, %#x) overlaps an allocated range: %w", iova, iova+size, ErrIOVAInUse)
	}
	a.take(i, iova, iova+size)
	return nil
}

// take removes [start, end) from free span i, which contains it, and records
// the allocation.
func (a *IOVAAllocator) take(i int, start, end uint64) {
	s := a.free[i]
	switch {
	case s.start == start && s.end == end:
		a.free = append(a.free[:i], a.free[i+1:]...)
	case s.start == start:
		a.free[i].start = end
	case s.end == end:
		a.free[i].end = start
	default:
		a.free[i].end = start
		a.free = append(a.free, span{})
		copy(a.free[i+2:], a.free[i+1:])
		a.free[i+1] = span{end, s.end}
	}
	a.allocated[start] = end - start
}

// Free releases the range that Alloc or Reserve returned at iova. Releasing
// an address that is not the start of a live range is an error.
func (a *IOVAAllocator) Free(iova uint64) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	size, ok := a.allocated[iova]
	if !ok {
		return fmt.Errorf("hugepage: free IOVA %#x: %w (double free, or not the start of a range)", iova, ErrIOVANotAllocated)
	}
	delete(a.allocated, iova)
	r := span{iova, iova + size}
	i := sort.Search(len(a.free), func(i int) bool { return a.free[i].start > iova })
	joinPrev := i > 0 && a.free[i-1].end == r.start
	joinNext := i < len(a.free) && a.free[i].start == r.end
	switch {
	case joinPrev && joinNext:
		a.free[i-1].end = a.free[i].end
		a.free = append(a.free[:i], a.free[i+1:]...)
	case joinPrev:
		a.free[i-1].end = r.end
	case joinNext:
		a.free[i].start = r.start
	default:
		a.free = append(a.free, span{})
		copy(a.free[i+1:], a.free[i:])
		a.free[i] = r
	}
	return nil
}

// FreeBytes is how much of the window is not allocated.
func (a *IOVAAllocator) FreeBytes() uint64 {
	a.mu.Lock()
	defer a.mu.Unlock()
	var n uint64
	for _, s := range a.free {
		n += s.end - s.start
	}
	return n
}
