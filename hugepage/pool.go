package hugepage

import "fmt"

// PoolConfig describes how a Pool carves up a Region.
type PoolConfig struct {
	// BufSize is the size of every buffer, a multiple of CacheLine so that
	// each buffer starts on its own cache line. Default 2048, which holds a
	// standard Ethernet frame and divides every page size evenly.
	BufSize int
	// Count is the number of buffers; zero means as many as fit.
	Count int
	// Offset is where in the region buffer 0 starts, a multiple of
	// CacheLine; the bytes before it stay free for other uses (descriptor
	// rings, for instance).
	Offset int
	// CheckDoubleFree makes Put panic when a buffer is returned twice. It
	// costs a bitmap update per buffer; building with the zcnetdebug tag
	// turns it on for every pool.
	CheckDoubleFree bool
}

// CacheLine is the alignment of pool buffers.
const CacheLine = 64

// DefaultBufSize is the buffer size used when PoolConfig.BufSize is zero.
const DefaultBufSize = 2048

// Pool hands out fixed-size buffers of a Region by index, the equivalent of
// a DPDK or ixy mempool.
//
// A Pool has a single owner: one goroutine (in zcnet, one lcore) calls Get
// and Put, and there is no lock. The engine serves each queue pair from one
// lcore and a buffer always comes home to the lcore that took it (a
// received buffer is reposted or freed by the poll task that harvested it),
// so one pool per lcore needs no synchronisation at all, which is simpler
// and faster than DPDK's shared ring with per-core caches. Buffers that must
// travel between cores go back through a ring owned by the receiving core,
// never by calling Put from a foreign goroutine.
//
// The free list is a stack, so the buffer freed last is handed out first,
// while its cache lines are still warm.
type Pool struct {
	region  *Region
	mem     []byte // the buffers' part of the region
	offset  uint64 // of buffer 0 within the region
	bufSize uint64
	count   uint32
	free    []uint32 // free[:top] are the free indexes
	top     int
	inPool  []uint64 // one bit per buffer, set while free; nil unless checking
}

// NewPool carves a pool out of r. The pool uses r's memory and reads r's IOVA
// on every IOVA call, so r must stay open as long as the pool is used.
func NewPool(r *Region, cfg PoolConfig) (*Pool, error) {
	if cfg.BufSize == 0 {
		cfg.BufSize = DefaultBufSize
	}
	if cfg.BufSize < 0 || cfg.BufSize%CacheLine != 0 {
		return nil, fmt.Errorf("hugepage: pool buffer size %d is not a positive multiple of %d", cfg.BufSize, CacheLine)
	}
	if cfg.Offset < 0 || cfg.Offset%CacheLine != 0 || cfg.Offset > r.Len() {
		return nil, fmt.Errorf("hugepage: pool offset %d is not a multiple of %d within the %d-byte region", cfg.Offset, CacheLine, r.Len())
	}
	fit := (r.Len() - cfg.Offset) / cfg.BufSize
	if cfg.Count == 0 {
		cfg.Count = fit
	}
	if cfg.Count <= 0 || cfg.Count > fit || uint64(cfg.Count) > 1<<32-1 {
		return nil, fmt.Errorf("hugepage: a pool of %d x %d-byte buffers at offset %d does not fit the %d-byte region (room for %d)",
			cfg.Count, cfg.BufSize, cfg.Offset, r.Len(), fit)
	}
	end := cfg.Offset + cfg.Count*cfg.BufSize
	p := &Pool{
		region:  r,
		mem:     r.Bytes()[cfg.Offset:end:end],
		offset:  uint64(cfg.Offset),
		bufSize: uint64(cfg.BufSize),
		count:   uint32(cfg.Count),
		free:    make([]uint32, cfg.Count),
		top:     cfg.Count,
	}
	// Lowest index on top, so a fresh pool hands out buffers in address order.
	for i := range p.free {
		p.free[i] = uint32(cfg.Count - 1 - i)
	}
	if cfg.CheckDoubleFree || debugChecks {
		p.inPool = make([]uint64, (cfg.Count+63)/64)
		for i := range cfg.Count {
			p.inPool[i/64] |= 1 << (i % 64)
		}
	}
	return p, nil
}

// Get takes up to len(dst) free buffers, writes their indexes into dst and
// returns how many it took (fewer when the pool runs low).
func (p *Pool) Get(dst []uint32) int {
	n := min(len(dst), p.top)
	p.top -= n
	copy(dst, p.free[p.top:p.top+n])
	if p.inPool != nil {
		for _, i := range dst[:n] {
			p.inPool[i/64] &^= 1 << (i % 64)
		}
	}
	return n
}

// Put returns buffers to the pool. Returning an index the pool does not own,
// or more buffers than it lent out, panics: either is a bug that would
// otherwise hand one buffer to two users. With CheckDoubleFree, returning a
// buffer that is already free panics too. After such a panic the pool's
// state is undefined.
func (p *Pool) Put(src []uint32) {
	if len(src) > len(p.free)-p.top {
		p.panicOverflow(len(src))
	}
	for _, i := range src {
		if i >= p.count {
			p.panicIndex(i)
		}
		if p.inPool != nil {
			bit := uint64(1) << (i % 64)
			if p.inPool[i/64]&bit != 0 {
				p.panicDouble(i)
			}
			p.inPool[i/64] |= bit
		}
	}
	p.top += copy(p.free[p.top:], src)
}

// The panics live in their own functions, kept out of line, so that the
// formatting code does not bloat the hot path and IOVA stays small enough to
// inline.

//go:noinline
func (p *Pool) panicOverflow(n int) {
	panic(fmt.Sprintf("hugepage: Put of %d buffers into a pool with only %d lent out", n, len(p.free)-p.top))
}

//go:noinline
func (p *Pool) panicIndex(i uint32) {
	panic(fmt.Sprintf("hugepage: Put of buffer %d into a pool of %d", i, p.count))
}

//go:noinline
func (p *Pool) panicDouble(i uint32) {
	panic(fmt.Sprintf("hugepage: double free of pool buffer %d", i))
}

// Bytes is buffer i's memory, BufSize bytes long (with capacity limited to
// it). It allocates nothing.
func (p *Pool) Bytes(i uint32) []byte {
	off := uint64(i) * p.bufSize
	return p.mem[off : off+p.bufSize : off+p.bufSize]
}

// IOVA is the address at which a device reaches buffer i. It is meaningful
// only while the region is mapped into the device's IOMMU domain.
func (p *Pool) IOVA(i uint32) uint64 {
	if i >= p.count {
		p.panicIndex(i)
	}
	return p.region.iova + p.offset + uint64(i)*p.bufSize
}

// Addr is the virtual address of buffer i in this process.
func (p *Pool) Addr(i uint32) uintptr {
	return addressOf(p.Bytes(i))
}

// Available is the number of free buffers.
func (p *Pool) Available() int { return p.top }

// Cap is the number of buffers the pool manages.
func (p *Pool) Cap() int { return int(p.count) }

// BufSize is the size of each buffer.
func (p *Pool) BufSize() int { return int(p.bufSize) }
