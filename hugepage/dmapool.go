package hugepage

import (
	"errors"
	"fmt"
)

// DMADomain is an IOMMU domain a DMA pool is mapped into: the domain's
// mapper and the allocator of its IOVA space (the one the domain's other
// users, such as a NIC driver's rings, allocate from, so that nothing
// collides).
type DMADomain struct {
	Mapper DMAMapper
	IOVA   *IOVAAllocator
}

// DMAPoolConfig describes a pool of buffers devices reach by DMA.
type DMAPoolConfig struct {
	// Pool sizes the buffers; Count is required, Offset must be 0.
	Pool PoolConfig
	// Memory backs the pool (Name labels it; PageSize 0 means 2 MiB).
	Memory Options
	// Domains the pool is mapped into, at least one. The pool has the
	// same IOVA in each, so a buffer one device filled can be handed to a
	// device of another domain as it is (a forwarder's shared pool).
	Domains []DMADomain
}

// DMAPool is a Pool in memory of its own, mapped into one or more IOMMU
// domains. NewDMAPool does every step (allocate, take the IOVA range,
// map, carve) and undoes what it did if a step fails; Close undoes all of
// it. It replaces the sequence each user used to write out, each with its
// own unwinding.
type DMAPool struct {
	*Pool
	region  *Region
	iova    uint64
	domains []DMADomain
	taken   int // domains[:taken] have the IOVA range allocated or reserved
	mapped  int // domains[:mapped] map the memory (domain 0 through region.MapInto)
}

// NewDMAPool allocates, maps and carves the pool cfg describes.
func NewDMAPool(cfg DMAPoolConfig) (_ *DMAPool, err error) {
	name := cfg.Memory.Name
	switch {
	case len(cfg.Domains) == 0:
		return nil, fmt.Errorf("hugepage: DMA pool %q needs an IOMMU domain to be mapped into", name)
	case cfg.Pool.Count <= 0:
		return nil, fmt.Errorf("hugepage: DMA pool %q: give the number of buffers (Count %d)", name, cfg.Pool.Count)
	case cfg.Pool.Offset != 0:
		return nil, fmt.Errorf("hugepage: DMA pool %q: buffers start at the beginning of its memory (Offset %d)", name, cfg.Pool.Offset)
	}
	for i, d := range cfg.Domains {
		if d.Mapper == nil || d.IOVA == nil {
			return nil, fmt.Errorf("hugepage: DMA pool %q: domain %d needs a mapper and an IOVA allocator", name, i)
		}
	}
	if cfg.Memory.PageSize == 0 {
		cfg.Memory.PageSize = Page2M
	}
	bufSize := cfg.Pool.BufSize
	if bufSize == 0 {
		bufSize = DefaultBufSize
	}
	region, err := Alloc(uint64(cfg.Pool.Count)*uint64(bufSize), cfg.Memory)
	if err != nil {
		return nil, fmt.Errorf("hugepage: DMA pool %q: %w", name, err)
	}
	p := &DMAPool{region: region, domains: append([]DMADomain(nil), cfg.Domains...)}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	size := uint64(region.Len())
	if p.iova, err = p.domains[0].IOVA.Alloc(size, uint64(region.PageSize())); err != nil {
		return nil, fmt.Errorf("hugepage: IOVA range for DMA pool %q: %w", name, err)
	}
	for p.taken = 1; p.taken < len(p.domains); p.taken++ {
		if err = p.domains[p.taken].IOVA.Reserve(p.iova, size); err != nil {
			return nil, fmt.Errorf("hugepage: IOVA range for DMA pool %q in domain %d: %w", name, p.taken, err)
		}
	}
	if err = region.MapInto(p.domains[0].Mapper, p.iova); err != nil {
		return nil, fmt.Errorf("hugepage: DMA pool %q: %w", name, err)
	}
	for p.mapped = 1; p.mapped < len(p.domains); p.mapped++ {
		if err = p.domains[p.mapped].Mapper.MapDMA(p.iova, region.Bytes()); err != nil {
			return nil, fmt.Errorf("hugepage: map DMA pool %q into domain %d: %w", name, p.mapped, err)
		}
	}
	if p.Pool, err = NewPool(region, cfg.Pool); err != nil {
		return nil, err
	}
	return p, nil
}

// IOVA is where the pool's memory starts in every domain it is mapped
// into.
func (p *DMAPool) IOVA() uint64 { return p.iova }

// Close unmaps the pool from its domains, gives the IOVA ranges back and
// frees the memory. Every device that may still DMA into the pool must be
// stopped first. If an unmap fails the memory is kept (a device may still
// reach it) and the error returned. Calling Close again does nothing.
func (p *DMAPool) Close() error {
	if p.region == nil {
		return nil
	}
	size := uint64(p.region.Len())
	for ; p.mapped > 1; p.mapped-- {
		if err := p.domains[p.mapped-1].Mapper.UnmapDMA(p.iova, size); err != nil {
			return fmt.Errorf("hugepage: unmap DMA pool from domain %d: %w", p.mapped-1, err)
		}
	}
	if err := p.region.Close(); err != nil { // unmaps domain 0 if mapped
		return err
	}
	p.region, p.mapped = nil, 0
	var errs []error
	for _, d := range p.domains[:p.taken] {
		if err := d.IOVA.Free(p.iova); err != nil {
			errs = append(errs, fmt.Errorf("hugepage: give back the IOVA range of a DMA pool: %w", err))
		}
	}
	p.taken = 0
	return errors.Join(errs...)
}
