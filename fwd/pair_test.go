package fwd

import (
	"context"
	"testing"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
)

// TestPairForwardsBothWays: OpenPair on two simulated ports forwards a
// generator's frames from A to B's sink and from B to A's, and Close
// tears it down without an IOMMU fault.
func TestPairForwardsBothWays(t *testing.T) {
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	var ports rig.Ports
	a, _ := ports.Open("sim:a")
	b, _ := ports.Open("sim:b")
	p, err := OpenPair(a, b, PairConfig{RxRing: 256, TxRing: 256, PoolBufs: 1024, PageSize: hugepage.Page4K,
		CPUs: cpus[len(cpus)-1:], LinkTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	if f := p.Forwarders(); f[0].Name() != "sim:a->sim:b" || f[1].Name() != "sim:b->sim:a" {
		t.Errorf("forwarders %s, %s", f[0].Name(), f[1].Name())
	}
	if err := p.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	time.Sleep(20 * time.Millisecond) // the forwarders fill the RX rings
	const n = 500
	for _, dir := range []struct{ from, to string }{{"sim:a", "sim:b"}, {"sim:b", "sim:a"}} {
		gen, err := ports.Port(dir.from).Generator(wire.GeneratorConfig{})
		if err != nil {
			t.Fatal(err)
		}
		sink := ports.Sink(dir.to)
		deadline := time.Now().Add(10 * time.Second)
		for sink.Stats().Received < n {
			if time.Now().After(deadline) {
				t.Fatalf("%s -> %s: %d of %d frames arrived", dir.from, dir.to, sink.Stats().Received, n)
			}
			if gen.Sent() < n && gen.Sent()-sink.Stats().Received < 32 {
				gen.Emit(1)
				continue
			}
			time.Sleep(100 * time.Microsecond)
		}
		if s := sink.Stats(); s.Lost != 0 || s.BadIPChecksum+s.BadUDPChecksum != 0 {
			t.Errorf("%s -> %s: sink %+v", dir.from, dir.to, s)
		}
	}
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := ports.Faults(); err != nil {
		t.Error(err)
	}
}
