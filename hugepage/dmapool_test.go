package hugepage_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/hugepage"
)

func newDomain(t *testing.T) (hugepage.DMADomain, *fakeMapper) {
	t.Helper()
	a, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	if err != nil {
		t.Fatal(err)
	}
	m := newFakeMapper()
	return hugepage.DMADomain{Mapper: m, IOVA: a}, m
}

// TestDMAPoolSharedByTwoDomains: a forwarder's pool is reachable at the
// same IOVA from both NICs; Close undoes every mapping and gives both IOVA
// ranges back.
func TestDMAPoolSharedByTwoDomains(t *testing.T) {
	d1, m1 := newDomain(t)
	d2, m2 := newDomain(t)
	free1, free2 := d1.IOVA.FreeBytes(), d2.IOVA.FreeBytes()
	p, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
		Pool:    hugepage.PoolConfig{BufSize: 2048, Count: 1500, CheckDoubleFree: true},
		Memory:  hugepage.Options{PageSize: hugepage.Page4K, Name: "dmapool-test"},
		Domains: []hugepage.DMADomain{d1, d2},
	})
	if err != nil {
		t.Fatal(err)
	}
	if p.Cap() != 1500 || p.BufSize() != 2048 {
		t.Fatalf("pool of %d x %d bytes, want 1500 x 2048", p.Cap(), p.BufSize())
	}
	size, ok1 := m1.maps[p.IOVA()]
	size2, ok2 := m2.maps[p.IOVA()]
	if !ok1 || !ok2 || size != size2 || size < 1500*2048 {
		t.Fatalf("pool at IOVA %#x: mapped %v/%v, sizes %d/%d", p.IOVA(), ok1, ok2, size, size2)
	}
	if got := p.Pool.IOVA(1499); got != p.IOVA()+1499*2048 {
		t.Fatalf("buffer 1499 at IOVA %#x, want %#x", got, p.IOVA()+1499*2048)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	if len(m1.maps) != 0 || len(m2.maps) != 0 {
		t.Fatalf("mappings left after Close: %v %v", m1.maps, m2.maps)
	}
	if d1.IOVA.FreeBytes() != free1 || d2.IOVA.FreeBytes() != free2 {
		t.Fatal("IOVA ranges not given back by Close")
	}
	if err := p.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestDMAPoolUnwindsAFailedStep: whichever step fails, the error says
// which and nothing stays mapped or allocated.
func TestDMAPoolUnwindsAFailedStep(t *testing.T) {
	refused := errors.New("fake IOMMU refuses")
	for _, c := range []struct {
		name     string
		sabotage func(d1, d2 hugepage.DMADomain, m1, m2 *fakeMapper)
		mention  string
	}{
		{"first map", func(_, _ hugepage.DMADomain, m1, _ *fakeMapper) { m1.failMap = refused }, "fake IOMMU refuses"},
		{"second map", func(_, _ hugepage.DMADomain, _, m2 *fakeMapper) { m2.failMap = refused }, "into domain 1"},
		{"IOVA taken in the second domain", func(d1, d2 hugepage.DMADomain, _, _ *fakeMapper) {
			base, _ := d1.IOVA.Window()
			if err := d2.IOVA.Reserve(base, 1<<30); err != nil {
				panic(err)
			}
		}, "in domain 1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			d1, m1 := newDomain(t)
			d2, m2 := newDomain(t)
			c.sabotage(d1, d2, m1, m2)
			free1, free2 := d1.IOVA.FreeBytes(), d2.IOVA.FreeBytes()
			_, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
				Pool:    hugepage.PoolConfig{Count: 16},
				Memory:  hugepage.Options{PageSize: hugepage.Page4K, Name: "dmapool-fail"},
				Domains: []hugepage.DMADomain{d1, d2},
			})
			if err == nil || !strings.Contains(err.Error(), c.mention) || !strings.Contains(err.Error(), "dmapool-fail") {
				t.Fatalf("error %v, want it to name the pool and mention %q", err, c.mention)
			}
			if len(m1.maps) != 0 || len(m2.maps) != 0 {
				t.Fatalf("mappings left: %v %v", m1.maps, m2.maps)
			}
			if d1.IOVA.FreeBytes() != free1 || d2.IOVA.FreeBytes() != free2 {
				t.Fatal("IOVA left allocated")
			}
		})
	}
}

func TestDMAPoolConfigRefused(t *testing.T) {
	d, _ := newDomain(t)
	for _, c := range []struct {
		cfg     hugepage.DMAPoolConfig
		mention string
	}{
		{hugepage.DMAPoolConfig{Pool: hugepage.PoolConfig{Count: 1}}, "needs an IOMMU domain"},
		{hugepage.DMAPoolConfig{Domains: []hugepage.DMADomain{d}}, "give the number of buffers"},
		{hugepage.DMAPoolConfig{Pool: hugepage.PoolConfig{Count: 1, Offset: 64}, Domains: []hugepage.DMADomain{d}}, "Offset 64"},
		{hugepage.DMAPoolConfig{Pool: hugepage.PoolConfig{Count: 1}, Domains: []hugepage.DMADomain{{IOVA: d.IOVA}}}, "domain 0 needs a mapper"},
	} {
		if _, err := hugepage.NewDMAPool(c.cfg); err == nil || !strings.Contains(err.Error(), c.mention) {
			t.Errorf("%+v: error %v, want it to mention %q", c.cfg, err, c.mention)
		}
	}
}
