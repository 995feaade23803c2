package appliance

import (
	"context"
	"fmt"
	"net"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
	"unsafe"

	"github.com/zcnet/zcnet/internal/testwait"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/sim"
	simguest "github.com/zcnet/zcnet/sim/guest"
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
	// vfs are the VF devices handed out, which record their IOMMU
	// domain's mappings.
	vfs map[int]*recordingVF
	// faults are the IOMMU faults a test provoked on purpose, per VF.
	faults map[int]uint64
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
	s := &simVFHost{simNIC: &simNIC{pf: pf, sink: wire.NewSink(nil)}, host: h, vfs: map[int]*recordingVF{}, faults: map[int]uint64{}}
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
			if n, last := pf.VF(i).IOMMU().Faults(); n != s.faults[i] {
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
	if s.vfs[i] == nil {
		s.vfs[i] = &recordingVF{VF: s.pf.VF(i), dma: &recordingDMA{mapper: s.pf.VF(i).DMA(), maps: map[uint64][]byte{}}}
	}
	return s.vfs[i], nil
}

// recordingVF is a simulated VF whose IOMMU domain records what is mapped
// in it, so that a test can tell whose memory a domain reaches.
type recordingVF struct {
	*sim.VF
	dma *recordingDMA
}

func (r *recordingVF) DMA() vfio.DMAMapper { return r.dma }

type recordingDMA struct {
	mapper vfio.DMAMapper
	mu     sync.Mutex
	maps   map[uint64][]byte // by IOVA
}

func (d *recordingDMA) MapDMA(iova uint64, mem []byte) error {
	if err := d.mapper.MapDMA(iova, mem); err != nil {
		return err
	}
	d.mu.Lock()
	d.maps[iova] = mem
	d.mu.Unlock()
	return nil
}

func (d *recordingDMA) UnmapDMA(iova, size uint64) error {
	if err := d.mapper.UnmapDMA(iova, size); err != nil {
		return err
	}
	d.mu.Lock()
	delete(d.maps, iova)
	d.mu.Unlock()
	return nil
}

// mapping is one mapping of a domain: its IOVA and the host memory.
type mapping struct {
	iova uint64
	mem  []byte
}

func (d *recordingDMA) mappings() []mapping {
	d.mu.Lock()
	defer d.mu.Unlock()
	var ms []mapping
	for iova, mem := range d.maps {
		ms = append(ms, mapping{iova, mem})
	}
	return ms
}

// covers reports whether the domain maps iova.
func (d *recordingDMA) covers(iova uint64) bool {
	for _, m := range d.mappings() {
		if iova >= m.iova && iova < m.iova+uint64(len(m.mem)) {
			return true
		}
	}
	return false
}

// hostRange is the host address range of mem.
func hostRange(mem []byte) (lo, hi uintptr) {
	lo = uintptr(unsafe.Pointer(unsafe.SliceData(mem)))
	return lo, lo + uintptr(len(mem))
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

var guestVFMACB = [6]byte{0x52, 0x54, 0x00, 0x0f, 0x00, 0x02}

// twoVFGuests opens an appliance with guest A on VF 0 and guest B on VF
// 1 of one PF, both polled by the one lcore, each an echo guest checking
// that it receives only frames for its own MAC; B's memory is memB bytes
// (0: the default).
func twoVFGuests(t *testing.T, host *simVFHost, memB uint64) (a *Appliance, sockA, sockB string, ea, eb *simguest.Echo) {
	t.Helper()
	dir := t.TempDir()
	sockA, sockB = filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	spec := testSpec(t, "vf:0", "vf:1")
	spec.NICs[0].Guests = []GuestSpec{{Socket: sockA, MAC: net.HardwareAddr(guestVFMAC[:]).String()}}
	spec.NICs[1].Guests = []GuestSpec{{Socket: sockB, MAC: net.HardwareAddr(guestVFMACB[:]).String()}}
	a = openVFTest(t, spec, host)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	var err error
	if ea, err = simguest.StartEchoAs(sockA, guestVFMAC); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ea.Close() })
	o := simguest.EchoOptions
	o.Memory.Size = memB
	g, err := simguest.Dial(sockB, o)
	if err != nil {
		t.Fatal(err)
	}
	if eb, err = simguest.RunEchoAs(g, guestVFMACB); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { eb.Close() })
	testwait.For(t, "both guests' buffers posted", func() bool {
		gs := a.Guests()
		return len(gs) == 2 && gs[0].Ready && gs[1].Ready
	})
	return a, sockA, sockB, ea, eb
}

// TestGuestOnVFRecoveryKeepsTheLcore: guests A and B on VFs 0 and 1 of
// one PF, polled by one lcore. The PF resets VF 0 while the host's driver
// does not answer the mailbox: A's bring-up waits for its mailbox
// timeouts and retries on a goroutine of VF 0's port, not on the lcore,
// so B's frames keep moving all the while (every round trip within a
// bound well under one mailbox timeout). When the host answers again A
// recovers and receives again, with no buffer lost.
func TestGuestOnVFRecoveryKeepsTheLcore(t *testing.T) {
	host := newSimVFHost(t, 2)
	a, sockA, _, ea, eb := twoVFGuests(t, host, 0)
	echo(t, host.simNIC, guestVFMAC, 64)
	echo(t, host.simNIC, guestVFMACB, 64)

	host.host.Stop()
	if err := host.pf.ResetVF(0); err != nil {
		t.Fatal(err)
	}
	vfA := a.nics[0].vf
	testwait.For(t, "VF 0's bring-up to start", func() bool { return vfA.recovering.Load() && vfA.task.down.Load() })

	// The recovery window: a second and a half of host silence (the VF's
	// mailbox timeout is 1 s, so at least one bring-up attempt waits it
	// out in full). B's round trips, 16 frames each, must each finish
	// within 250 ms: with the bring-up on the lcore one would wait for
	// the mailbox.
	start, rxB := time.Now(), eb.Received()
	rounds, frames, slowest := 0, 0, time.Duration(0)
	for time.Since(start) < 1500*time.Millisecond {
		t0 := time.Now()
		if err := tryEcho(host.simNIC, guestVFMACB, 16, false, 250*time.Millisecond); err != nil {
			t.Fatalf("round %d, %v into the recovery window: guest B stalled: %v", rounds, time.Since(start), err)
		}
		slowest = max(slowest, time.Since(t0))
		rounds++
		frames += 16
	}
	if !vfA.recovering.Load() {
		t.Fatal("VF 0 recovered while the host was silent")
	}
	t.Logf("recovery window %v: guest B echoed %d frames in %d rounds (slowest %v), received %d", time.Since(start).Round(time.Millisecond), frames, rounds, slowest.Round(time.Microsecond), eb.Received()-rxB)

	host.host.Run()
	testwait.For(t, "VF 0 to recover once the host answers", func() bool {
		return !vfA.recovering.Load() && !vfA.task.down.Load()
	})
	if err := tryEcho(host.simNIC, guestVFMAC, 64, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
	echo(t, host.simNIC, guestVFMACB, 64)
	if n := vfA.task.leaked.Load(); n != 0 {
		t.Fatalf("%d buffers left on VF 0 after the channel drained it", n)
	}
	if r := a.Snapshot("test").NICs[0].VFResets; r == nil || *r != 1 {
		t.Fatalf("VF 0 resets %v, want 1", r)
	}
	if ea.Misdelivered() != 0 || eb.Misdelivered() != 0 {
		t.Fatalf("misdelivered: A %d, B %d", ea.Misdelivered(), eb.Misdelivered())
	}
	if _, pcs, err := a.Guest(sockA); err != nil || pcs[0].Copied.Rx != 0 || pcs[0].ZeroCopy.Rx == 0 {
		t.Fatalf("guest A: %+v, %v", pcs, err)
	}
}

// TestGuestsOnTwoVFs is the usual SR-IOV deployment: guests A and B each
// on a VF of one PF, in one appliance. Frames for each guest's MAC reach
// that guest only, zero copy. Each guest's memory is mapped in its own
// VF's IOMMU domain and nowhere else. Then the hostile case: VF A's
// receive queue is handed a descriptor naming an IOVA of guest B's
// memory (as a bug in zcnet could, past the engine's validation) and a
// frame arrives for A: the simulated IOMMU refuses the write (the fault
// is counted in VF A's domain, at that IOVA), B's memory there is
// untouched (a canary), and B goes on echoing.
func TestGuestsOnTwoVFs(t *testing.T) {
	host := newSimVFHost(t, 2)
	const memB = 128 << 20 // larger than A's, so that its top lies beyond anything of A's domain
	a, sockA, sockB, ea, eb := twoVFGuests(t, host, memB)
	for _, d := range []struct {
		name     string
		mac      [6]byte
		to, from *simguest.Echo
	}{{"A", guestVFMAC, ea, eb}, {"B", guestVFMACB, eb, ea}} {
		to, from := d.to.Received(), d.from.Received()
		echo(t, host.simNIC, d.mac, 500)
		if got := d.to.Received() - to; got < 500 {
			t.Fatalf("guest %s received %d of the 500 frames for it", d.name, got)
		}
		if got := d.from.Received() - from; got != 0 {
			t.Fatalf("the other guest received %d of the frames for guest %s", got, d.name)
		}
	}
	if ea.Misdelivered() != 0 || eb.Misdelivered() != 0 {
		t.Fatalf("misdelivered: A %d, B %d", ea.Misdelivered(), eb.Misdelivered())
	}
	for _, sock := range []string{sockA, sockB} {
		_, pcs, err := a.Guest(sock)
		if err != nil {
			t.Fatal(err)
		}
		if pc := pcs[0]; pc.ZeroCopy.Rx < 500 || pc.ZeroCopy.Tx < 500 || pc.Copied.Rx != 0 || pc.Copied.Tx != 0 {
			t.Fatalf("%s: not zero copy: %+v", sock, pc)
		}
	}

	// Each domain maps host memory of its own: no host page is mapped in
	// both, and B's guest memory (the one mapping of memB bytes) is in
	// B's domain only.
	domA, domB := host.vfs[0].dma, host.vfs[1].dma
	var regionB *mapping
	for _, mb := range domB.mappings() {
		if len(mb.mem) == memB {
			regionB = &mb
		}
		bl, bh := hostRange(mb.mem)
		for _, ma := range domA.mappings() {
			if al, ah := hostRange(ma.mem); al < bh && bl < ah {
				t.Fatalf("host memory [%#x, %#x) is mapped in both VF domains (A at IOVA %#x, B at %#x)", max(al, bl), min(ah, bh), ma.iova, mb.iova)
			}
		}
	}
	if regionB == nil {
		t.Fatalf("guest B's memory (%d bytes) is not mapped in VF B's domain: %d mappings", memB, len(domB.mappings()))
	}
	hostile := regionB.iova + memB - 4096 // B's last page: an IOVA of B's memory in B's domain
	if domA.covers(hostile) {
		t.Fatalf("IOVA %#x maps something in VF A's domain too; the test needs one that does not", hostile)
	}
	canary := regionB.mem[memB-4096:]
	for i := range canary {
		canary[i] = byte(0xa5 ^ i)
	}

	// Guest A leaves, so that its VF's queue pair is the test's; the
	// hostile descriptor goes on it.
	if err := a.RemoveGuest(sockA); err != nil {
		t.Fatal(err)
	}
	vfA := a.nics[0].vf.vf
	qp := vfA.QueuePair(0)
	if err := qp.StartRx(2048); err != nil {
		t.Fatal(err)
	}
	const hostileCookie = 0x4242
	if n := qp.Rx().Post([]ring.Buf{{IOVA: hostile, Len: 2048, Cookie: hostileCookie}}); n != 1 {
		t.Fatalf("posted %d hostile descriptors", n)
	}
	gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(guestVFMAC[:]), FrameSize: 256}, host.pf)
	if err != nil {
		t.Fatal(err)
	}
	domainA := host.pf.VF(0).IOMMU()
	gen.Emit(1)
	testwait.For(t, "the IOMMU fault in VF A's domain", func() bool { n, _ := domainA.Faults(); return n > 0 })
	n, last := domainA.Faults()
	if last != hostile {
		t.Fatalf("VF A's domain faulted at IOVA %#x, want the hostile %#x", last, hostile)
	}
	host.faults[0] = n // expected by the cleanup's check
	if nb, _ := host.pf.VF(1).IOMMU().Faults(); nb != 0 {
		t.Fatalf("%d faults in VF B's domain", nb)
	}
	for i := range canary {
		if canary[i] != byte(0xa5^i) {
			t.Fatalf("guest B's memory at IOVA %#x+%d was written through VF A: %#x", hostile, i, canary[i])
		}
	}
	if got := qp.Rx().Harvest(make([]ring.RxDone, 4)); got != 0 {
		t.Fatalf("VF A completed %d frames into the hostile buffer", got)
	}
	// B is unaffected, and the hostile buffer comes back once.
	echo(t, host.simNIC, guestVFMACB, 64)
	if err := qp.StopRx(); err != nil {
		t.Fatal(err)
	}
	if c, err := qp.DrainRx(nil); err != nil || len(c) != 1 || c[0] != hostileCookie {
		t.Fatalf("drained %v, %v; want the hostile cookie once", c, err)
	}
	t.Logf("hostile descriptor on VF A at B's IOVA %#x: %d fault(s) in A's domain, B's canary intact", hostile, n)
}
