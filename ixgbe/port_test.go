package ixgbe

import (
	"testing"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/sim"
)

// simPort opens a port on a fresh simulator with cfg (a short link
// timeout by default) and closes it when the test ends.
func simPort(t testing.TB, cfg Config) (*sim.PF, *Port, *hugepage.IOVAAllocator) {
	t.Helper()
	pf := sim.NewPF(sim.DefaultOptions())
	t.Cleanup(func() { pf.Close() })
	alloc, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	if err != nil {
		t.Fatal(err)
	}
	cfg.IOVA = alloc
	if cfg.LinkTimeout == 0 {
		cfg.LinkTimeout = 2 * time.Second
	}
	p, err := Open(pf, cfg)
	if err != nil {
		t.Fatalf("Open on the simulator: %v", err)
	}
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		// Every test proves the NIC stayed inside mapped memory and the
		// driver inside the documented registers. Faults a test injected
		// on purpose are not the driver's.
		if c := pf.Counters(); c.IOMMUFaults != c.InjectedFaults {
			t.Errorf("simulator counted %d IOMMU faults, %d of them injected (last at IOVA %#x)", c.IOMMUFaults, c.InjectedFaults, c.LastFaultIOVA)
		}
		if u := pf.UnknownOffsets(); len(u) != 0 {
			t.Errorf("driver touched registers the simulator does not define: %+v", u)
		}
	})
	return pf, p, alloc
}

func TestBringUp(t *testing.T) {
	pf, p, _ := simPort(t, Config{})
	want := sim.DefaultOptions().MAC
	if got := p.MAC(); string(got) != string(want[:]) {
		t.Errorf("MAC = %s, want %x", got, want)
	}
	if l := p.Link(); !l.Up || l.Speed != 10000 {
		t.Errorf("Link after Open = %v, want up at 10000 Mb/s", l)
	}
	if u := pf.UnknownOffsets(); len(u) != 0 {
		t.Errorf("driver touched registers the simulator does not define: %+v", u)
	}
}
