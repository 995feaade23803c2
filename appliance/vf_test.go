package appliance

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcnet/zcnet/internal/testwait"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/linuxpf"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
)

// simVFHost is a simulated 82599 whose PF the host's Linux driver keeps
// (sim/linuxpf) with VFs enabled, its wire ending in a verifying sink;
// the opener hands out VF i for the address "vf:i".
type simVFHost struct {
	*simNIC
	host *linuxpf.Host
}

func newSimVFHost(t *testing.T, numVFs int) *simVFHost {
	t.Helper()
	o := sim.DefaultOptions()
	o.Address = "0000:03:00.0"
	pf := sim.NewPF(o)
	h, err := linuxpf.Start(pf, linuxpf.Config{NumVFs: numVFs})
	if err != nil {
		t.Fatal(err)
	}
	s := &simVFHost{simNIC: &simNIC{pf: pf, sink: wire.NewSink(nil)}, host: h}
	pf.Attach(s.sink)
	h.Run()
	pf.Start()
	t.Cleanup(func() {
		h.Stop()
		pf.Stop()
		if c := pf.Counters(); c.IOMMUFaults != 0 {
			t.Errorf("%d IOMMU faults (last at IOVA %#x)", c.IOMMUFaults, c.LastFaultIOVA)
		}
		for i := range numVFs {
			if n, last := pf.VF(i).IOMMU().Faults(); n != 0 {
				t.Errorf("VF %d: %d IOMMU faults (last at IOVA %#x): the VF reached memory not mapped in its domain", i, n, last)
			}
		}
		_ = pf.Close()
	})
	return s
}

func (s *simVFHost) open(addr string) (vfio.Device, error) {
	var i int
	if _, err := fmt.Sscanf(addr, "vf:%d", &i); err != nil {
		return nil, err
	}
	return s.pf.VF(i), nil
}

func vfSpec(t *testing.T, guests ...GuestSpec) Spec {
	s := testSpec(t, "vf:0")
	s.NICs[0].Guests = guests
	return s
}

var guestVFMAC = [6]byte{0x52, 0x54, 0x00, 0x0f, 0x00, 0x01}

// TestGuestOnVF: the appliance serves a guest on VF 0 of a PF the host's
// Linux driver keeps: the guest's configured MAC is asked of the host,
// frames from the wire to it come back through the echoing guest, zero
// copy, in the VF's own IOMMU domain. The host then resets the VF in the
// middle of the traffic, twice (its driver restarting the VF, then a
// function reset): the channel gives back every buffer, the VF comes up
// again, and the guest keeps receiving, with no IOMMU fault.
func TestGuestOnVF(t *testing.T) {
	host := newSimVFHost(t, 2)
	sock := filepath.Join(t.TempDir(), "vf.sock")
	a := openVFTest(t, vfSpec(t, GuestSpec{Socket: sock, MAC: net.HardwareAddr(guestVFMAC[:]).String()}), host)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	if hi, _ := host.host.Info(0); hi.MAC != guestVFMAC {
		t.Fatalf("the host has VF 0 at %x, want the guest's %x", hi.MAC, guestVFMAC)
	}
	if nics := a.NICs(); nics[0].MAC != net.HardwareAddr(guestVFMAC[:]).String() || nics[0].MaxGuests != 1 {
		t.Fatalf("NICs %+v", nics)
	}
	e := startEcho(t, a, sock)
	defer e.Close()
	echo(t, host.simNIC, guestVFMAC, 64)

	// Traffic throughout the resets, paced so that only the data path
	// (or a reset) can lose a frame.
	stop := make(chan struct{})
	done := make(chan struct{})
	var rounds atomic.Int64
	go func() {
		defer close(done)
		for {
			select {
			case <-stop:
				return
			default:
			}
			_ = tryEcho(host.simNIC, guestVFMAC, 16, false, 200*time.Millisecond)
			rounds.Add(1)
		}
	}()
	for i, reset := range []func() error{
		func() error { return host.host.ResetVF(0) },
		func() error { return host.pf.ResetVF(0) },
	} {
		start := rounds.Load()
		testwait.For(t, "traffic before the reset", func() bool { return rounds.Load() > start+2 })
		if err := reset(); err != nil {
			t.Fatal(err)
		}
		testwait.For(t, "the VF to recover", func() bool {
			r := a.Snapshot("test").NICs[0].VFResets
			return r != nil && *r == uint64(i+1) && !a.nics[0].vf.task.down.Load()
		})
	}
	close(stop)
	<-done
	// The guest receives again.
	if err := tryEcho(host.simNIC, guestVFMAC, 64, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	if n := a.nics[0].vf.task.leaked.Load(); n != 0 {
		t.Fatalf("%d buffers left on the VF after the channel drained it", n)
	}
	_, pcs, err := a.Guest(sock)
	if err != nil {
		t.Fatal(err)
	}
	pc := pcs[0]
	if pc.ZeroCopy.Rx == 0 || pc.ZeroCopy.Tx == 0 || pc.Copied.Rx != 0 || pc.Copied.Tx != 0 {
		t.Fatalf("not zero copy: %+v", pc)
	}
	if pc.Restarts < 4 {
		t.Fatalf("%d queue restarts counted, want both directions stopped twice", pc.Restarts)
	}
	if hi, _ := host.host.Info(0); hi.MAC != guestVFMAC || !hi.ClearToSend {
		t.Fatalf("host's view of VF 0 after recovery: %+v", hi)
	}
	// Shutdown (the cleanup) takes the rest back; the sim's cleanup
	// checks the IOMMU domains.
}

// TestGuestOnVFHostMAC: a guest without a configured MAC gets the VF's,
// the one the host's administrator assigned.
func TestGuestOnVFHostMAC(t *testing.T) {
	host := newSimVFHost(t, 2)
	hostMAC := [6]byte{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}
	if err := host.host.SetVFMAC(0, hostMAC); err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "vf.sock")
	a := openVFTest(t, vfSpec(t, GuestSpec{Socket: sock}), host)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	gi := a.Guests()[0]
	if gi.MAC != net.HardwareAddr(hostMAC[:]).String() || gi.MACSource != "configured" {
		t.Fatalf("guest %+v: want the host's MAC %x", gi, hostMAC)
	}
	e := startEcho(t, a, sock)
	defer e.Close()
	echo(t, host.simNIC, hostMAC, 32)
}

// TestGuestOnVFRefusals: what a VF port refuses, each with the reason:
// another MAC than the host's for an untrusted VF (at startup and at port
// add), a second guest, max_guests above 1, a guest VLAN.
func TestGuestOnVFRefusals(t *testing.T) {
	host := newSimVFHost(t, 2)
	if err := host.host.SetVFMAC(0, [6]byte{0x02, 0x11, 0x22, 0x33, 0x44, 0x55}); err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "vf.sock")
	g := GuestSpec{Socket: sock, MAC: net.HardwareAddr(guestVFMAC[:]).String()}
	if _, err := Open(vfSpec(t, g), host.open); err == nil || !strings.Contains(err.Error(), "trust on") || !strings.Contains(err.Error(), "52:54:00:0f:00:01") {
		t.Fatalf("Open with a MAC the host refuses: %v", err)
	}
	spec := vfSpec(t, g, GuestSpec{Socket: filepath.Join(dir, "b.sock")})
	if _, err := Open(spec, host.open); err == nil || !strings.Contains(err.Error(), "one guest") {
		t.Fatalf("Open with two guests on a VF: %v", err)
	}
	spec = vfSpec(t, GuestSpec{Socket: sock, VLAN: 10})
	if _, err := Open(spec, host.open); err == nil || !strings.Contains(err.Error(), "vf N vlan 10") {
		t.Fatalf("Open with a guest VLAN on a VF: %v", err)
	}
	// A VF port without a guest yet, and guests added at runtime.
	spec = vfSpec(t)
	a := openVFTest(t, spec, host)
	if _, err := a.AddGuest("vf:0", g); err == nil || !strings.Contains(err.Error(), "trust on") {
		t.Fatalf("AddGuest with a MAC the host refuses: %v", err)
	}
	if _, err := a.AddGuest("vf:0", GuestSpec{Socket: sock}); err != nil {
		t.Fatal(err)
	}
	if _, err := a.AddGuest("vf:0", GuestSpec{Socket: filepath.Join(dir, "c.sock")}); err == nil || !strings.Contains(err.Error(), "one VF per guest") {
		t.Fatalf("a second guest on a VF: %v", err)
	}
	// Trusted on the host: the guest's own MAC is granted.
	if err := host.host.SetVFTrust(1, true); err != nil {
		t.Fatal(err)
	}
	_ = host.host.SetVFMAC(1, [6]byte{0x02, 0x11, 0x22, 0x33, 0x44, 0x66})
	spec = testSpec(t, "vf:1")
	spec.NICs[0].Guests = []GuestSpec{{Socket: filepath.Join(dir, "d.sock"), MAC: "52:54:00:0f:00:02"}}
	b := openVFTest(t, spec, host)
	if b.NICs()[0].MAC != "52:54:00:0f:00:02" {
		t.Fatalf("trusted VF: %+v", b.NICs())
	}
}

func openVFTest(t *testing.T, spec Spec, host *simVFHost) *Appliance {
	t.Helper()
	a, err := Open(spec, host.open)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := a.Shutdown(); err != nil {
			t.Errorf("Shutdown: %v", err)
		}
	})
	return a
}
