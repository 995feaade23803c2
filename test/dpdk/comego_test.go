package dpdk_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
)

// comeGoCycles is how many times the visiting testpmd comes and goes: each
// cycle starts a DPDK process, so a handful keeps the test short; the
// appliance's own test runs 100 cycles with the simulator's guest.
const comeGoCycles = 4

// TestTestpmdGuestsComeAndGo: the appliance (as `zcnet run` assembles it)
// serves a steady dpdk-testpmd guest on one simulated 82599 while a second
// testpmd is added on another port with appliance.AddGuest, carries
// traffic, quits and is removed with RemoveGuest, several times. The steady
// guest's probes all come back (paced, so that only the data path could
// lose one), nothing faults in the IOMMU, and each removal leaves nothing
// of the visitor mapped.
func TestTestpmdGuestsComeAndGo(t *testing.T) {
	h := checkHost(t, 2)
	dir := t.TempDir()
	steady, visitor := filepath.Join(dir, "steady.sock"), filepath.Join(dir, "visitor.sock")
	spec := appliance.Spec{
		Lcores: fmt.Sprint(h.backendCPU), PageSize: hugepage.Page4K, LinkTimeout: 5 * time.Second,
		NICs: []appliance.NICSpec{
			{PCI: "sim:0", Rxd: zcNICRing, Txd: zcNICRing, Guests: []appliance.GuestSpec{{Socket: steady}}},
			{PCI: "sim:1", Rxd: zcNICRing, Txd: zcNICRing, MaxGuests: 1},
		},
	}
	r, err := rig.Open(rig.Config{Spec: spec})
	if err != nil {
		t.Fatal(err)
	}
	a := r.App
	defer func() {
		if err := r.Shutdown(); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
		r.Ports.Stop()
		if err := r.Ports.Faults(); err != nil {
			t.Error(err)
		}
	}()
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	sc := zcScenarios[0] // split rings, mergeable buffers
	guest := func(name, sock string) *testpmd {
		p := startTestpmd(t, h, name, eal(h.backendCPU, h.frontendCPU, "comego-"+name, sc.vdev(sock)), sc.app())
		p.waitForwarding()
		return p
	}
	g := guest("steady", steady)
	defer g.kill()
	echo := func(addr string, n int) {
		t.Helper()
		if err := pacedEcho(r.Ports.PF(addr), r.Ports.Sink(addr), rig.PortMAC(addr), n); err != nil {
			t.Fatal(err)
		}
	}
	echo("sim:0", 64)
	// testpmd's start-up stops and restarts its rings a few times; from
	// here on nothing may disturb the steady guest's port.
	before := a.Snapshot("test").Ports[0]

	for i := range comeGoCycles {
		if _, err := a.AddGuest("sim:1", appliance.GuestSpec{Socket: visitor}); err != nil {
			t.Fatalf("cycle %d: AddGuest: %v", i, err)
		}
		v := guest(fmt.Sprintf("visitor%d", i), visitor)
		echo("sim:1", 64)
		echo("sim:0", 64) // the steady guest, while the visitor is there
		if st := v.stop(); st.RxPackets < 64 || st.TxPackets != st.RxPackets || st.RxDropped+st.TxDropped != 0 {
			t.Fatalf("cycle %d: the visiting testpmd received %d, sent %d, dropped %d/%d", i, st.RxPackets, st.TxPackets, st.RxDropped, st.TxDropped)
		}
		if err := a.RemoveGuest(visitor); err != nil {
			t.Fatalf("cycle %d: RemoveGuest: %v", i, err)
		}
		if _, err := os.Stat(visitor); !os.IsNotExist(err) {
			t.Fatalf("cycle %d: the visitor's socket is still there (%v)", i, err)
		}
		echo("sim:0", 64) // and after it left
		select {
		case err := <-a.Failed():
			t.Fatalf("cycle %d: an lcore stopped: %v", i, err)
		default:
		}
	}
	after := a.Snapshot("test").Ports
	if len(after) != 1 || after[0].Name != before.Name {
		t.Fatalf("ports after the cycles: %+v, want only the steady guest's", after)
	}
	p := after[0]
	var drops uint64
	for _, n := range p.Drops {
		drops += n
	}
	if drops != 0 || p.Restarts != before.Restarts || p.GuestErrors != 0 {
		t.Errorf("the steady guest's port was disturbed while the visitor came and went: restarts %d -> %d, drops %v, guest errors %d",
			before.Restarts, p.Restarts, p.Drops, p.GuestErrors)
	}
	t.Logf("%d cycles; the steady testpmd echoed %d frames zero-copy", comeGoCycles, p.ZeroCopy.Rx)
}

// pacedEcho probes until one comes back through the guest, then sends n
// probes at most 32 ahead of those returned and waits for every one.
func pacedEcho(pf *sim.PF, sink *wire.Sink, dst [6]byte, n int) error {
	gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(dst[:]), FrameSize: zcFrameSize}, pf)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(20 * time.Second)
	for start := sink.Stats().Received; sink.Stats().Received == start; {
		gen.Emit(1)
		for wait := time.Now().Add(200 * time.Millisecond); sink.Stats().Received == start && time.Now().Before(wait); {
			time.Sleep(time.Millisecond)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no probe came back through the guest (sim %+v)", pf.Address(), pf.Counters())
		}
	}
	time.Sleep(100 * time.Millisecond) // stragglers of the probing
	before := sink.Stats().Received
	back := func() int { return int(sink.Stats().Received - before) }
	for sent := 0; back() < n; {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: %d of %d probes came back, %d sent (sim %+v)", pf.Address(), back(), n, sent, pf.Counters())
		}
		if k := min(n-sent, 32-max(0, sent-back())); k > 0 {
			gen.Emit(k)
			sent += k
			continue
		}
		time.Sleep(100 * time.Microsecond)
	}
	if b := back(); b != n {
		return fmt.Errorf("%s: %d probes came back, %d sent", pf.Address(), b, n)
	}
	return nil
}
