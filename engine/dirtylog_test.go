package engine

import (
	"bytes"
	"fmt"
	"slices"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// pagesOf adds the 4 KiB pages of [gpa, gpa+n) to set.
func pagesOf(set map[uint64]bool, gpa, n uint64) {
	for p := gpa &^ (vhost.LogPageSize - 1); n > 0 && p < gpa+n; p += vhost.LogPageSize {
		set[p] = true
	}
}

func sortedPages(set map[uint64]bool) []uint64 {
	var out []uint64
	for p := range set {
		out = append(out, p)
	}
	slices.Sort(out)
	return out
}

// snapshot copies the guest's memory, region by region.
func snapshot(g *guest.Guest) map[uint64][]byte {
	s := map[uint64][]byte{}
	for _, r := range g.Mem.Regions() {
		s[r.GuestPhysAddr] = bytes.Clone(g.Mem.Bytes(r.GuestPhysAddr, r.Size))
	}
	return s
}

// changedPages lists the pages whose bytes differ from the snapshot.
func changedPages(g *guest.Guest, before map[uint64][]byte) map[uint64]bool {
	out := map[uint64]bool{}
	for gpa, old := range before {
		now := g.Mem.Bytes(gpa, uint64(len(old)))
		for off := 0; off < len(old); off += vhost.LogPageSize {
			end := min(off+vhost.LogPageSize, len(old))
			if !bytes.Equal(old[off:end], now[off:end]) {
				out[(gpa+uint64(off))&^(vhost.LogPageSize-1)] = true
			}
		}
	}
	return out
}

// TestDirtyLogNICWrites receives frames on the simulated NIC while the
// guest is being migrated and checks the guest's dirty log against guest
// memory itself: every page whose bytes changed during the window (the
// NIC's DMA into posted guest buffers, the headers and moves the engine
// writes, the copy fallback's copies, the used ring) is marked, except
// the rings' driver areas the guest writes itself, and nothing is marked
// but the receive buffers as far as the used entries say and the used
// ring. Buffers of 1200 bytes straddle page boundaries, and full-size
// frames span two of them. With logging off nothing is marked.
func TestDirtyLogNICWrites(t *testing.T) {
	for _, c := range []struct {
		name  string
		guest guest.Options
		copy  bool
	}{
		{name: "zero-copy-spanning", guest: guest.Options{RxBufSize: 1200}},
		{name: "zero-copy-header-apart", guest: guest.Options{RxBufSize: 1200 + rxGapForTest, RxHeaderApart: true}},
		{name: "zero-copy-4k", guest: guest.Options{RxBufSize: 4096}},
		// 6000-byte buffers: a frame's data reaches pages no buffer starts in.
		{name: "zero-copy-straddling", guest: guest.Options{RxBufSize: 6000}},
		{name: "copy-straddling", guest: guest.Options{RxBufSize: 6000}, copy: true},
		{name: "copy", guest: guest.Options{RxBufSize: 1200}, copy: true},
		{name: "packed", guest: guest.Options{RxBufSize: 1200, Features: guest.DefaultWanted | vhost.FRingPacked}},
	} {
		t.Run(c.name, func(t *testing.T) {
			features := uint64(0)
			if c.guest.Features&vhost.FRingPacked != 0 {
				features = vhost.DefaultFeatures | vhost.FRingPacked
			}
			r := newRig(t, rigOptions{guest: c.guest, frame: 1518, migration: true, features: features,
				channel: ChannelConfig{ForceCopy: c.copy}})
			g := r.g
			r.postRx(t, 64)
			r.gen.Emit(8)
			r.receive(t, 8) // before the migration: not logged
			log, err := g.StartMigration()
			if err != nil {
				t.Fatal(err)
			}
			defer log.Close()
			if p := log.Take(); len(p) != 0 {
				t.Fatalf("pages marked before the window: %#x", p)
			}
			before := snapshot(g)
			g.TrackRxWrites, g.RxWrites = true, nil
			const n = 96
			for range n / 16 {
				r.gen.Emit(16)
				r.receive(t, 16)
			}
			marked := map[uint64]bool{}
			for _, p := range log.Take() {
				marked[p] = true
			}
			// What the device may write: the receive buffers as the used
			// entries say, and the used ring (the descriptor ring and the
			// device area of a packed ring).
			written, usedRing, driverOwned := map[uint64]bool{}, map[uint64]bool{}, map[uint64]bool{}
			for _, w := range g.RxWrites {
				pagesOf(written, w.GPA, w.Len)
			}
			rx := g.Ring(0)
			if c.guest.Features&vhost.FRingPacked != 0 {
				pagesOf(usedRing, rx.DescGPA, 16*uint64(rx.Size()))
				pagesOf(usedRing, rx.UsedGPA, 4)
				pagesOf(driverOwned, rx.AvailGPA, 4)
			} else {
				pagesOf(usedRing, rx.UsedGPA, 6+8*uint64(rx.Size()))
				pagesOf(driverOwned, rx.DescGPA, 16*uint64(rx.Size()))
				pagesOf(driverOwned, rx.AvailGPA, 6+2*uint64(rx.Size()))
			}
			var errs []string
			for p := range changedPages(g, before) {
				if !marked[p] && !driverOwned[p] {
					errs = append(errs, fmt.Sprintf("page %#x changed but not marked", p))
				}
			}
			for p := range written {
				if !marked[p] {
					errs = append(errs, fmt.Sprintf("page %#x written (used entry) but not marked", p))
				}
			}
			for p := range marked {
				if !written[p] && !usedRing[p] {
					errs = append(errs, fmt.Sprintf("page %#x marked but not written", p))
				}
			}
			if len(errs) > 0 {
				slices.Sort(errs)
				t.Fatalf("%d problems, first %q; marked %#x, written %#x (stats %+v)", len(errs), errs[0], sortedPages(marked), sortedPages(written), r.channel.Stats())
			}
			if len(written) < 15 {
				t.Fatalf("only %d pages written: the test did not exercise much", len(written))
			}
			st := r.channel.Stats()
			if c.copy != (st.RxCopied > 0) || (!c.copy && st.RxZeroCopy == 0) {
				t.Fatalf("wrong path taken: %+v", st)
			}

			// Logging off: nothing marked.
			if err := g.SetLogging(false); err != nil {
				t.Fatal(err)
			}
			r.gen.Emit(16)
			r.receive(t, 16)
			if p := log.Take(); len(p) != 0 {
				t.Fatalf("logging off, yet pages %#x were marked", p)
			}
		})
	}
}
