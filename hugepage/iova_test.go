package hugepage_test

import (
	"errors"
	"math/rand/v2"
	"sort"
	"testing"

	"github.com/zcnet/zcnet/hugepage"
)

func newIOVA(t *testing.T, base, limit uint64) *hugepage.IOVAAllocator {
	t.Helper()
	a, err := hugepage.NewIOVAAllocator(base, limit)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func TestIOVAAllocAlignsAndRounds(t *testing.T) {
	a := newIOVA(t, hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	x, err := a.Alloc(100, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if x != hugepage.DefaultIOVABase {
		t.Errorf("first allocation at %#x, want the window base %#x", x, uint64(hugepage.DefaultIOVABase))
	}
	y, err := a.Alloc(2<<20, 2<<20)
	if err != nil {
		t.Fatal(err)
	}
	if y%(2<<20) != 0 || y < x+4096 {
		t.Errorf("2MiB-aligned allocation at %#x after a 4KiB one at %#x", y, x)
	}
	// The hole left by alignment is still usable.
	z, err := a.Alloc(4096, 4096)
	if err != nil {
		t.Fatal(err)
	}
	if z != x+4096 {
		t.Errorf("small allocation at %#x, want the gap at %#x", z, x+4096)
	}
	if free := a.FreeBytes(); free != hugepage.DefaultIOVALimit-hugepage.DefaultIOVABase-2*4096-2<<20 {
		t.Errorf("FreeBytes = %#x after allocating 2 pages and 2MiB", free)
	}
}

func TestIOVAErrors(t *testing.T) {
	if _, err := hugepage.NewIOVAAllocator(4097, 1<<40); !errors.Is(err, hugepage.ErrIOVAAlignment) {
		t.Errorf("unaligned window: err = %v", err)
	}
	if _, err := hugepage.NewIOVAAllocator(1<<40, 1<<40); err == nil {
		t.Error("empty window accepted")
	}
	a := newIOVA(t, 1<<32, 1<<32+1<<20)
	for _, align := range []uint64{0, 1, 2048, 3 << 12, 4096 + 1} {
		if _, err := a.Alloc(4096, align); !errors.Is(err, hugepage.ErrIOVAAlignment) {
			t.Errorf("align %#x: err = %v, want ErrIOVAAlignment", align, err)
		}
	}
	if _, err := a.Alloc(0, 4096); err == nil {
		t.Error("zero-size allocation succeeded")
	}
	if _, err := a.Alloc(2<<20, 4096); !errors.Is(err, hugepage.ErrIOVAExhausted) {
		t.Errorf("allocation larger than the window: err = %v, want ErrIOVAExhausted", err)
	}
	// Fill the 1 MiB window, then one more page does not fit.
	x, err := a.Alloc(1<<20, 1<<20)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Alloc(4096, 4096); !errors.Is(err, hugepage.ErrIOVAExhausted) {
		t.Errorf("allocation from a full window: err = %v, want ErrIOVAExhausted", err)
	}
	if err := a.Free(x + 4096); !errors.Is(err, hugepage.ErrIOVANotAllocated) {
		t.Errorf("free of an address inside a range: err = %v, want ErrIOVANotAllocated", err)
	}
	if err := a.Free(x); err != nil {
		t.Fatal(err)
	}
	if err := a.Free(x); !errors.Is(err, hugepage.ErrIOVANotAllocated) {
		t.Errorf("double free: err = %v, want ErrIOVANotAllocated", err)
	}
	if a.FreeBytes() != 1<<20 {
		t.Errorf("FreeBytes = %#x after freeing everything, want the whole window", a.FreeBytes())
	}
}

func TestIOVAReserve(t *testing.T) {
	a := newIOVA(t, 1<<32, 1<<33)
	if err := a.Reserve(1<<32+8192, 8192); err != nil {
		t.Fatal(err)
	}
	for _, r := range []struct{ iova, size uint64 }{
		{1<<32 + 8192, 4096},  // same start
		{1<<32 + 4096, 8192},  // overlaps the front
		{1<<32 + 12288, 8192}, // overlaps the back
		{1<<32 - 4096, 4096},  // below the window
		{1 << 33, 4096},       // at the limit
	} {
		if err := a.Reserve(r.iova, r.size); !errors.Is(err, hugepage.ErrIOVAInUse) {
			t.Errorf("Reserve(%#x, %#x): err = %v, want ErrIOVAInUse", r.iova, r.size, err)
		}
	}
	if err := a.Reserve(1<<32+100, 4096); !errors.Is(err, hugepage.ErrIOVAAlignment) {
		t.Errorf("unaligned Reserve: err = %v", err)
	}
	// Alloc steps around the reserved range.
	x, _ := a.Alloc(4096, 4096)
	y, _ := a.Alloc(8192, 4096)
	if x != 1<<32 || y != 1<<32+16384 {
		t.Errorf("allocations at %#x, %#x; want %#x and %#x around the reserved range", x, y, uint64(1<<32), uint64(1<<32+16384))
	}
	if err := a.Free(1<<32 + 8192); err != nil {
		t.Errorf("Free of a reserved range: %v", err)
	}
}

// TestIOVARandomAgainstModel runs random allocations, reservations and frees
// and checks after every step that live ranges never overlap, stay inside the
// window, honour their alignment, and that free space adds up.
func TestIOVARandomAgainstModel(t *testing.T) {
	const base, limit = 1 << 32, 1<<32 + 16<<20 // small window so it fills up
	rng := rand.New(rand.NewPCG(1, 2))
	a := newIOVA(t, base, limit)
	type rng_ struct{ start, size uint64 }
	live := map[uint64]uint64{} // the model: start -> size
	var used uint64
	exhausted := 0
	for step := range 4000 {
		switch op := rng.IntN(10); {
		case op < 5: // allocate
			size := uint64(1+rng.IntN(64)) * 4096
			if rng.IntN(8) == 0 {
				size = uint64(1+rng.IntN(4)) << 20
			}
			align := uint64(4096) << rng.IntN(10)
			x, err := a.Alloc(size, align)
			if errors.Is(err, hugepage.ErrIOVAExhausted) {
				exhausted++
				continue
			}
			if err != nil {
				t.Fatalf("step %d: Alloc(%#x, %#x): %v", step, size, align, err)
			}
			if x%align != 0 {
				t.Fatalf("step %d: Alloc(%#x, %#x) = %#x, misaligned", step, size, align, x)
			}
			live[x] = size
			used += size
		case op < 6: // reserve a random fixed range
			x := base + uint64(rng.IntN((limit-base)/4096))*4096
			size := uint64(1+rng.IntN(16)) * 4096
			err := a.Reserve(x, size)
			overlaps := x+size > limit
			for s, n := range live {
				if x < s+n && s < x+size {
					overlaps = true
				}
			}
			if overlaps != (err != nil) {
				t.Fatalf("step %d: Reserve(%#x, %#x) err = %v, model says overlap=%v", step, x, size, err, overlaps)
			}
			if err == nil {
				live[x] = size
				used += size
			}
		default: // free a live range, or (sometimes) a bogus one
			if len(live) == 0 || rng.IntN(20) == 0 {
				x := base + uint64(rng.IntN((limit-base)/4096))*4096
				_, isLive := live[x]
				if err := a.Free(x); isLive == (err != nil) {
					t.Fatalf("step %d: Free(%#x) err = %v, live=%v", step, x, err, isLive)
				}
				if isLive {
					used -= live[x]
					delete(live, x)
				}
				continue
			}
			starts := make([]uint64, 0, len(live))
			for s := range live {
				starts = append(starts, s)
			}
			sort.Slice(starts, func(i, j int) bool { return starts[i] < starts[j] })
			x := starts[rng.IntN(len(starts))]
			if err := a.Free(x); err != nil {
				t.Fatalf("step %d: Free(%#x): %v", step, x, err)
			}
			used -= live[x]
			delete(live, x)
		}
		ranges := make([]rng_, 0, len(live))
		for s, n := range live {
			ranges = append(ranges, rng_{s, n})
		}
		sort.Slice(ranges, func(i, j int) bool { return ranges[i].start < ranges[j].start })
		for i, r := range ranges {
			if r.start < base || r.start+r.size > limit {
				t.Fatalf("step %d: range [%#x, +%#x) outside the window", step, r.start, r.size)
			}
			if i > 0 && ranges[i-1].start+ranges[i-1].size > r.start {
				t.Fatalf("step %d: ranges [%#x, +%#x) and [%#x, +%#x) overlap", step,
					ranges[i-1].start, ranges[i-1].size, r.start, r.size)
			}
		}
		if got := a.FreeBytes(); got != limit-base-used {
			t.Fatalf("step %d: FreeBytes = %#x, model says %#x", step, got, limit-base-used)
		}
	}
	if exhausted == 0 {
		t.Error("the window never filled up; the test did not exercise exhaustion")
	}
	// Freeing everything coalesces back into one window: the largest
	// possible allocation fits again.
	for s := range live {
		if err := a.Free(s); err != nil {
			t.Fatal(err)
		}
	}
	if x, err := a.Alloc(limit-base, 4096); err != nil || x != base {
		t.Errorf("whole-window allocation after freeing all = %#x, %v; free list did not coalesce", x, err)
	}
}
