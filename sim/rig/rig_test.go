package rig_test

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
)

// TestRigEchoesThroughTheGuest: generator -> simulated NIC -> appliance ->
// built-in guest -> appliance -> NIC -> sink; every frame comes back,
// zero-copy, and Close (appliance.Shutdown) leaves no IOMMU fault.
func TestRigEchoesThroughTheGuest(t *testing.T) {
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	const addr = "sim:0000:03:00.0"
	r, err := rig.Open(rig.Config{
		Spec: appliance.Spec{Lcores: fmt.Sprint(cpus[len(cpus)-1]), PageSize: hugepage.Page4K, LinkTimeout: 5 * time.Second,
			NICs: []appliance.NICSpec{{PCI: addr, Rxd: 256, Txd: 256,
				Guests: []appliance.GuestSpec{{Socket: filepath.Join(t.TempDir(), "g.sock")}}}}},
		Generator: &wire.GeneratorConfig{FrameSize: 128},
		Guest:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	if r.Port != r.Ports.Port(addr) || r.Ports.PF(addr) == nil || r.Ports.Sink(addr) != r.Port.Sink {
		t.Fatalf("ports: %+v", r.Port)
	}
	if got, want := r.App.NICs()[0].MAC, fmt.Sprint(netMAC(rig.PortMAC(addr))); got != want || rig.PortMAC(addr) == rig.PortMAC("sim:0000:04:00.0") {
		t.Errorf("NIC MAC %s, want %s, derived from the address and different for another", got, want)
	}
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	const n = 200
	deadline := time.Now().Add(10 * time.Second)
	for sent := 0; r.Port.Sink.Stats().Received < n; {
		if time.Now().After(deadline) {
			t.Fatalf("sink got %d of %d frames back (traffic %+v)", r.Port.Sink.Stats().Received, sent, r.Traffic())
		}
		if sent-int(r.Port.Sink.Stats().Received) < 16 && sent < n {
			r.Gen.Emit(1)
			sent++
			continue
		}
		time.Sleep(100 * time.Microsecond)
	}
	s := r.Snapshot("test")
	if tot := s.Totals(); tot.ZeroCopy < 2*n || s.Traffic.GuestTx < n || !s.Traffic.BuiltinGuest {
		t.Errorf("totals %+v, traffic %+v: want %d frames each way zero-copy through the built-in guest", tot, s.Traffic, n)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

// TestUnwiredPorts: the zero Ports opens started ports; unwired ones have
// no sink.
func TestUnwiredPorts(t *testing.T) {
	ps := rig.Ports{Unwired: true}
	dev, err := ps.Open("0000:05:00.0")
	if err != nil {
		t.Fatal(err)
	}
	defer dev.Close()
	if p := ps.Port("0000:05:00.0"); p == nil || p.Sink != nil || p.PF != dev || p.MAC != rig.PortMAC("0000:05:00.0") {
		t.Errorf("port %+v: want the opened PF, no sink, the derived MAC", p)
	}
	if ps.Port("0000:06:00.0") != nil || ps.PF("0000:06:00.0") != nil || ps.Sink("0000:06:00.0") != nil {
		t.Error("a port never opened is there")
	}
	ps.Stop()
	if err := ps.Faults(); err != nil {
		t.Errorf("Faults: %v", err)
	}
}

func netMAC(m [6]byte) string {
	return fmt.Sprintf("%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1], m[2], m[3], m[4], m[5])
}

// TestRigVFPort: a NIC port at a VF address is VF 0 of a simulated 82599
// whose PF the host's Linux driver keeps; the guest is given the MAC the
// host assigned the VF, the generator addresses it, and every frame
// comes back through the guest, zero-copy, with no IOMMU fault in the
// VF's domain or the PF's.
func TestRigVFPort(t *testing.T) {
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	const pfAddr, addr = "sim:0000:07:00.0", "sim:0000:07:00.0/vf0"
	if p, v, ok := rig.SplitVF(addr); !ok || p != pfAddr || v != 0 {
		t.Fatalf("SplitVF(%s) = %s, %d, %v", addr, p, v, ok)
	}
	for _, a := range []string{pfAddr, "0000:07:00.0/vfx", "/vf1"} {
		if _, _, ok := rig.SplitVF(a); ok {
			t.Errorf("SplitVF(%s) ok", a)
		}
	}
	r, err := rig.Open(rig.Config{
		Spec: appliance.Spec{Lcores: fmt.Sprint(cpus[len(cpus)-1]), PageSize: hugepage.Page4K, LinkTimeout: 5 * time.Second,
			NICs: []appliance.NICSpec{{PCI: addr, Rxd: 256, Txd: 256,
				Guests: []appliance.GuestSpec{{Socket: filepath.Join(t.TempDir(), "g.sock")}}}}},
		Generator: &wire.GeneratorConfig{FrameSize: 128, Rate: 20000, Count: 500},
		Guest:     true,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	mac := rig.VFMAC(addr)
	if r.Port.VF == nil || r.Port.Host == nil || r.Port.MAC != mac || r.Port.PF != r.Ports.PF(pfAddr) || r.Port.Sink != r.Ports.Sink(pfAddr) {
		t.Fatalf("VF port %+v", r.Port)
	}
	if got := r.App.Guests()[0].MAC; got != netMAC(mac) {
		t.Fatalf("guest MAC %s, want the host's %s", got, netMAC(mac))
	}
	if _, err := r.Ports.Open(pfAddr); err == nil {
		t.Error("the PF under the host's driver opened as a port too")
	}
	if err := r.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	const n = 500
	if err := r.Gen.Start(); err != nil {
		t.Fatal(err)
	}
	for deadline := time.Now().Add(10 * time.Second); r.Gen.Sent() < n && time.Now().Before(deadline); { // Count stops it
		time.Sleep(time.Millisecond)
	}
	r.Gen.Stop()
	r.Drain()
	st := r.Port.Sink.Stats()
	if st.Received != n || st.Lost != 0 || r.Gen.Sent() != n {
		t.Fatalf("sink %+v of %d sent", st, r.Gen.Sent())
	}
	if s := r.Snapshot("test"); s.Totals().ZeroCopy < 2*n || s.Totals().Copied != 0 {
		tot := s.Totals()
		t.Errorf("totals %+v: want every frame zero-copy", tot)
	}
	if err := r.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
}
