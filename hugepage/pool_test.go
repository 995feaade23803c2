package hugepage_test

import (
	"fmt"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/hugepage"
)

func newPool(t testing.TB, cfg hugepage.PoolConfig) (*hugepage.Region, *hugepage.Pool) {
	t.Helper()
	r, err := hugepage.Alloc(2<<20, hugepage.Options{PageSize: hugepage.Page2M})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	p, err := hugepage.NewPool(r, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return r, p
}

func TestPoolCarvesRegion(t *testing.T) {
	r, p := newPool(t, hugepage.PoolConfig{Offset: 4096})
	want := (2<<20 - 4096) / hugepage.DefaultBufSize
	if p.Cap() != want || p.Available() != want || p.BufSize() != hugepage.DefaultBufSize {
		t.Fatalf("pool of %d (%d free) x %d bytes, want %d x %d", p.Cap(), p.Available(), p.BufSize(), want, hugepage.DefaultBufSize)
	}
	const iova = hugepage.DefaultIOVABase
	if err := r.MapInto(newFakeMapper(), iova); err != nil {
		t.Fatal(err)
	}
	// Every buffer lies inside the region after the offset, is cache-line
	// aligned, and its IOVA and address agree on its position.
	for i := range uint32(p.Cap()) {
		b := p.Bytes(i)
		off := p.Addr(i) - r.Addr()
		if len(b) != p.BufSize() || cap(b) != p.BufSize() {
			t.Fatalf("buffer %d: len %d cap %d", i, len(b), cap(b))
		}
		if off != uintptr(4096+int(i)*p.BufSize()) {
			t.Fatalf("buffer %d at region offset %#x", i, off)
		}
		if p.Addr(i)%hugepage.CacheLine != 0 {
			t.Fatalf("buffer %d at %#x is not cache-line aligned", i, p.Addr(i))
		}
		if got := p.IOVA(i); got != iova+uint64(off) {
			t.Fatalf("buffer %d: IOVA %#x, want %#x", i, got, iova+uint64(off))
		}
	}
	// Writes through one buffer's slice land in the region where expected
	// and nowhere else.
	fill(p.Bytes(3), 0x77)
	if err := check(r.Bytes()[4096+3*p.BufSize():4096+4*p.BufSize()], 0x77); err != nil {
		t.Error(err)
	}
	if r.Bytes()[4096+4*p.BufSize()] != 0 || r.Bytes()[4096+3*p.BufSize()-1] != 0 {
		t.Error("write to buffer 3 spilled into its neighbours")
	}
}

func TestPoolGetPut(t *testing.T) {
	_, p := newPool(t, hugepage.PoolConfig{Count: 100, BufSize: 2176})
	seen := map[uint32]bool{}
	batch := make([]uint32, 32)
	var got []uint32
	for {
		n := p.Get(batch)
		if n == 0 {
			break
		}
		for _, i := range batch[:n] {
			if seen[i] || i >= 100 {
				t.Fatalf("Get handed out %d twice or out of range", i)
			}
			seen[i] = true
		}
		got = append(got, batch[:n]...)
	}
	if len(got) != 100 || p.Available() != 0 {
		t.Fatalf("drained %d buffers, %d left; want 100 and 0", len(got), p.Available())
	}
	p.Put(got[:40])
	if p.Available() != 40 {
		t.Errorf("Available = %d after returning 40", p.Available())
	}
	// Last freed comes back first (warm cache).
	one := make([]uint32, 1)
	if p.Get(one) != 1 || one[0] != got[39] {
		t.Errorf("Get after Put returned %d, want the last freed %d", one[0], got[39])
	}
	p.Put(one)
	p.Put(got[40:])
	if p.Available() != 100 {
		t.Errorf("Available = %d after returning all", p.Available())
	}
	if n := p.Get(make([]uint32, 0)); n != 0 {
		t.Errorf("Get into an empty slice returned %d", n)
	}
}

func TestPoolConfigErrors(t *testing.T) {
	r := alloc(t, 2<<20, hugepage.Options{})
	for _, cfg := range []hugepage.PoolConfig{
		{BufSize: 100},                     // not a cache-line multiple
		{BufSize: -64},                     // negative
		{Offset: 10},                       // misaligned offset
		{Offset: 4 << 20},                  // past the region
		{Count: 1025},                      // 1024 x 2 KiB fit
		{Count: 1024, Offset: 64},          // one too many after the offset
		{BufSize: 4 << 20},                 // no buffer fits
		{Count: -1},                        // negative
		{Count: 2, Offset: 2<<20 - 2*2048}, // exactly fits: valid, checked below
	} {
		_, err := hugepage.NewPool(r, cfg)
		fits := cfg.Count == 2
		if (err == nil) != fits {
			t.Errorf("NewPool(%+v): err = %v", cfg, err)
		}
	}
}

// mustPanic runs f and returns the panic message, failing if f returns.
func mustPanic(t *testing.T, what string, f func()) string {
	t.Helper()
	var msg string
	func() {
		defer func() { msg = fmt.Sprint(recover()) }()
		f()
		t.Errorf("%s did not panic", what)
	}()
	return msg
}

func TestPoolDoubleFreeDetected(t *testing.T) {
	_, p := newPool(t, hugepage.PoolConfig{Count: 64, CheckDoubleFree: true})
	bufs := make([]uint32, 4)
	p.Get(bufs)
	p.Put(bufs[:1])
	msg := mustPanic(t, "double Put", func() { p.Put(bufs[:1]) })
	if !strings.Contains(msg, "double free") || !strings.Contains(msg, fmt.Sprint(bufs[0])) {
		t.Errorf("panic %q does not report a double free of buffer %d", msg, bufs[0])
	}

	// A duplicate within one batch is caught too.
	_, p = newPool(t, hugepage.PoolConfig{Count: 64, CheckDoubleFree: true})
	p.Get(bufs)
	if msg := mustPanic(t, "duplicate in batch", func() { p.Put([]uint32{bufs[1], bufs[1]}) }); !strings.Contains(msg, "double free") {
		t.Errorf("panic %q, want double free", msg)
	}

	// Buffers that were never handed out cannot be returned.
	_, p = newPool(t, hugepage.PoolConfig{Count: 64, CheckDoubleFree: true})
	p.Get(bufs[:1])
	if msg := mustPanic(t, "Put of a free buffer", func() { p.Put([]uint32{63}) }); !strings.Contains(msg, "double free") {
		t.Errorf("panic %q, want double free", msg)
	}
}

// TestPoolAlwaysRejectsForeignIndexes: the cheap checks run without
// CheckDoubleFree, because skipping them would corrupt the pool.
func TestPoolAlwaysRejectsForeignIndexes(t *testing.T) {
	_, p := newPool(t, hugepage.PoolConfig{Count: 64})
	bufs := make([]uint32, 2)
	p.Get(bufs)
	if msg := mustPanic(t, "out-of-range Put", func() { p.Put([]uint32{64}) }); !strings.Contains(msg, "buffer 64 into a pool of 64") {
		t.Errorf("panic %q", msg)
	}
	if msg := mustPanic(t, "overfull Put", func() { p.Put([]uint32{0, 1, 2}) }); !strings.Contains(msg, "only 2 lent out") {
		t.Errorf("panic %q", msg)
	}
	mustPanic(t, "IOVA of a foreign index", func() { p.IOVA(64) })
	mustPanic(t, "Bytes of a foreign index", func() { p.Bytes(64) })
}

func TestPoolHotPathAllocatesNothing(t *testing.T) {
	for _, check := range []bool{false, true} {
		_, p := newPool(t, hugepage.PoolConfig{CheckDoubleFree: check})
		batch := make([]uint32, 32)
		var sink uint64
		allocs := testing.AllocsPerRun(1000, func() {
			n := p.Get(batch)
			for _, i := range batch[:n] {
				b := p.Bytes(i)
				b[0] = byte(i)
				sink += p.IOVA(i) + uint64(p.Addr(i))
			}
			p.Put(batch[:n])
		})
		if allocs != 0 {
			t.Errorf("CheckDoubleFree=%v: %v allocations per Get/Bytes/IOVA/Put round", check, allocs)
		}
		_ = sink
	}
}

func BenchmarkPoolGetPut(b *testing.B) {
	for _, check := range []bool{false, true} {
		for _, batch := range []int{1, 32, 64} {
			name := fmt.Sprintf("batch=%d", batch)
			if check {
				name += "/checked"
			}
			b.Run(name, func(b *testing.B) {
				_, p := newPool(b, hugepage.PoolConfig{CheckDoubleFree: check})
				bufs := make([]uint32, batch)
				b.ReportAllocs()
				for b.Loop() {
					n := p.Get(bufs)
					p.Put(bufs[:n])
				}
				b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*batch), "ns/buf")
			})
		}
	}
}
