package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
)

// TestShutdownReleasesGuestsInOrder shuts the appliance down while a
// zero-copy guest echoes traffic that keeps arriving from the wire, so the
// NIC holds the guest's receive buffers and transmit packets to the last
// moment. Shutdown must stop every engine port (its NIC queues stopped and
// the guest's buffers taken back) before guest memory leaves the NIC's
// IOMMU domain: no DMA fault, no guest region left mapped, and every port
// closed. (The vhost ring hook and GuestDMA.UnmapRegion also stop a port's
// queues when the session ends, so a port shutdown forgot to close does
// no harm today that the simulator could see; but it stays attached to
// its guest and would start its NIC queues again if anything polled it.)
func TestShutdownReleasesGuestsInOrder(t *testing.T) {
	pf := sim.NewPF(sim.DefaultOptions())
	sink := wire.NewSink(nil)
	pf.Attach(sink)
	sock := filepath.Join(t.TempDir(), "vm.sock")
	spec := applianceSpec{
		Lcores:      fmt.Sprint(lastCPU(t)),
		Ports:       []nicSpec{{PCI: "sim:" + pf.Address(), Rxd: 256, Txd: 256, Vhost: []vhostSpec{{Socket: sock}}}},
		pageSize:    hugepage.Page4K,
		linkTimeout: 5 * time.Second,
	}
	a, err := assemble(zap.NewNop(), spec, []vfio.Device{pf})
	if err != nil {
		t.Fatal(err)
	}
	shutDown := false
	defer func() {
		if !shutDown {
			a.shutdown()
		}
	}()
	pf.Start()
	defer pf.Stop()
	if err := a.run(context.Background()); err != nil {
		t.Fatal(err)
	}
	g := dialEcho(t, sock)
	defer g.close()
	echoThrough(t, pf, sink, 100)
	// Frames keep arriving while the appliance shuts down.
	gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(sim.DefaultOptions().MAC), FrameSize: 256, Rate: 20000}, pf)
	if err != nil {
		t.Fatal(err)
	}
	if err := gen.Start(); err != nil {
		t.Fatal(err)
	}
	defer gen.Stop()
	deadline := time.Now().Add(10 * time.Second)
	for start := sink.Stats().Received; sink.Stats().Received < start+50; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the generator's frames do not come back through the guest (sim %+v)", pf.Counters())
		}
	}
	if st := a.ports[0].Stats(); st.RxZeroCopy == 0 || st.TxZeroCopy == 0 {
		t.Fatalf("the guest is not served zero-copy both ways, the NIC holds none of its memory: %+v", st)
	}

	err = a.shutdown()
	shutDown = true
	if err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	gen.Stop()
	if c := pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("%d IOMMU faults (last at IOVA %#x): the NIC reached guest memory after it was unmapped", c.IOMMUFaults, c.LastFaultIOVA)
	}
	for _, vp := range a.vhosts {
		if n := vp.dma.Mapped(); n != 0 {
			t.Errorf("%s: %d guest regions still DMA-mapped after shutdown", vp.spec.Socket, n)
		}
	}
	for _, p := range a.ports {
		if err := p.Err(); err == nil || !strings.Contains(err.Error(), "port closed") {
			t.Errorf("%s after shutdown: Err() = %v, want the port closed", p.Name(), err)
		}
	}
}
