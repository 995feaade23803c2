package driver

import (
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/vfio"
	"github.com/zcnet/zcnet/vhost"
)

// GuestDMA makes one guest's memory reachable by a NIC: it is the vhost
// device's MemoryHook, DMA-mapping every guest memory region into the NIC's
// IOMMU domain when the memory table arrives (each region at an IOVA of its
// own from the domain's allocator) and unmapping it when the table goes
// away, but only after every port of the guest has stopped its NIC queues
// and taken back each guest buffer the NIC held: a region is never unmapped
// while the device may still write into it.
//
// Set it as vhost.Config.Hook of the device before the front end connects,
// and create the guest's Ports with it. The vhost device calls the hook
// with its data-path lock held, and Ports touch GuestDMA only with that
// lock held, so GuestDMA needs no lock of its own.
type GuestDMA struct {
	mapper  vfio.DMAMapper
	iova    *hugepage.IOVAAllocator
	regions []dmaRegion
	ports   []*Port
	mapped  atomic.Int32 // len(regions), readable without the data-path lock
}

// dmaRegion is one mapped guest region: host range [host, host+size) is
// reachable by the device at iova.
type dmaRegion struct {
	host, size, iova uint64
	gpa              uint64
}

// NewGuestDMA returns the memory hook of one guest whose buffers go to
// devices behind mapper; IOVAs come from alloc, the allocator of that
// IOMMU domain (shared with the NIC driver's rings, so they cannot collide).
func NewGuestDMA(mapper vfio.DMAMapper, alloc *hugepage.IOVAAllocator) *GuestDMA {
	return &GuestDMA{mapper: mapper, iova: alloc}
}

var _ vhost.MemoryHook = (*GuestDMA)(nil)

// MapRegion DMA-maps a new guest region.
func (g *GuestDMA) MapRegion(r vhost.Region) error {
	if len(r.Host) == 0 || addrOf(r.Host)%hugepage.IOMMUPage != 0 || r.Size%hugepage.IOMMUPage != 0 {
		return fmt.Errorf("guest region gpa %#x size %#x is not page aligned in this process; the IOMMU maps whole pages (back guest memory with page-aligned memfd or hugetlbfs offsets)", r.GuestPhysAddr, r.Size)
	}
	iova, err := g.iova.Alloc(r.Size, hugepage.IOMMUPage)
	if err != nil {
		return fmt.Errorf("IOVA space for guest region gpa %#x size %#x: %w", r.GuestPhysAddr, r.Size, err)
	}
	if err := g.mapper.MapDMA(iova, r.Host); err != nil {
		_ = g.iova.Free(iova)
		return fmt.Errorf("DMA-map guest region gpa %#x at IOVA %#x: %w", r.GuestPhysAddr, iova, err)
	}
	g.regions = append(g.regions, dmaRegion{host: uint64(addrOf(r.Host)), size: r.Size, iova: iova, gpa: r.GuestPhysAddr})
	g.mapped.Add(1)
	return nil
}

// UnmapRegion stops every port of the guest (their NIC queues are stopped
// and every posted guest buffer taken back) and then unmaps the region. If
// a NIC queue does not confirm it stopped, the region stays mapped, which
// leaks IOVA space but never lets the device write into freed memory.
func (g *GuestDMA) UnmapRegion(r vhost.Region) error {
	if len(r.Host) == 0 {
		return nil
	}
	host := uint64(addrOf(r.Host))
	i := g.find(host, r.Size)
	if i < 0 {
		return nil // never mapped (MapRegion failed for it)
	}
	var errs []error
	for _, p := range g.ports {
		errs = append(errs, p.quiesce())
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("guest region gpa %#x left DMA-mapped: a NIC queue did not stop: %w", r.GuestPhysAddr, err)
	}
	m := g.regions[i]
	if err := g.mapper.UnmapDMA(m.iova, m.size); err != nil {
		return fmt.Errorf("DMA-unmap guest region gpa %#x at IOVA %#x: %w", m.gpa, m.iova, err)
	}
	g.regions = append(g.regions[:i], g.regions[i+1:]...)
	g.mapped.Add(-1)
	return g.iova.Free(m.iova)
}

func (g *GuestDMA) find(host, size uint64) int {
	for i, m := range g.regions {
		if m.host == host && m.size == size {
			return i
		}
	}
	return -1
}

// Mapped reports how many guest regions are DMA-mapped; safe from any
// goroutine.
func (g *GuestDMA) Mapped() int { return int(g.mapped.Load()) }

// iovaOf translates guest memory b (a slice the virtqueue produced from
// the memory table, hence already validated against it) to the IOVA the
// device reaches it at. It reports false if b is not inside one mapped
// region, which the caller treats as an unusable buffer.
func (g *GuestDMA) iovaOf(b []byte) (uint64, bool) {
	if len(b) == 0 {
		return 0, false
	}
	a := uint64(addrOf(b))
	for i := range g.regions {
		m := &g.regions[i]
		if off := a - m.host; a >= m.host && off < m.size && uint64(len(b)) <= m.size-off {
			return m.iova + off, true
		}
	}
	return 0, false
}

func (g *GuestDMA) attach(p *Port) { g.ports = append(g.ports, p) }

func (g *GuestDMA) detach(p *Port) {
	for i, q := range g.ports {
		if q == p {
			g.ports = append(g.ports[:i], g.ports[i+1:]...)
			return
		}
	}
}
