package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zcnet/zcnet/internal/testwait"

	"github.com/zcnet/zcnet/engine"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim"
	simguest "github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
	"github.com/zcnet/zcnet/vhost"
)

// simNIC is a started simulated 82599 whose wire ends in a verifying sink.
type simNIC struct {
	pf   *sim.PF
	sink *wire.Sink
}

// simNICs opens a simulated 82599 for each address asked for and stops
// them when the test ends (after the appliance's cleanup closed them).
type simNICs struct {
	t    *testing.T
	nics map[string]*simNIC
}

func newSimNICs(t *testing.T) *simNICs {
	s := &simNICs{t: t, nics: map[string]*simNIC{}}
	t.Cleanup(func() {
		for _, n := range s.nics {
			n.pf.Stop()
			if c := n.pf.Counters(); c.IOMMUFaults != 0 {
				t.Errorf("%s: %d IOMMU faults (last at IOVA %#x): the NIC reached memory not mapped for it", n.pf.Address(), c.IOMMUFaults, c.LastFaultIOVA)
			}
		}
	})
	return s
}

func (s *simNICs) open(addr string) (vfio.Device, error) {
	if strings.HasPrefix(addr, "missing") {
		return nil, fmt.Errorf("no such device %s", addr)
	}
	o := sim.DefaultOptions()
	o.Address = addr
	n := &simNIC{pf: sim.NewPF(o), sink: wire.NewSink(nil)}
	n.pf.Attach(n.sink)
	n.pf.Start()
	s.nics[addr] = n
	return n.pf, nil
}

// testSpec is a spec for the simulated NICs at pcis, one guest slot each,
// small rings and 4 KiB pages, polled by one lcore.
func testSpec(t *testing.T, pcis ...string) Spec {
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	s := Spec{Lcores: fmt.Sprint(cpus[len(cpus)-1]), PageSize: hugepage.Page4K, LinkTimeout: 5 * time.Second}
	for _, p := range pcis {
		s.NICs = append(s.NICs, NICSpec{PCI: p, Rxd: 256, Txd: 256})
	}
	return s
}

func openTest(t *testing.T, spec Spec, nics *simNICs, opts ...Option) *Appliance {
	t.Helper()
	a, err := Open(spec, nics.open, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		var pe *pollmode.TaskPanicError
		if err := a.Shutdown(); err != nil && !errors.As(err, &pe) { // a test's panicking task is reported again
			t.Errorf("Shutdown: %v", err)
		}
	})
	return a
}

// echoInFlight bounds the probes echo has on their way through a guest:
// far fewer than the rings hold, so that however late the lcore and the
// guest run on a loaded machine no probe finds the NIC without a buffer,
// and every loss is the data path's.
const echoInFlight = 32

// echo sends n probes to dst into n's wire and waits until the sink has
// them all back from the echoing guest.
func echo(t *testing.T, n *simNIC, dst [6]byte, count int) {
	t.Helper()
	if err := tryEcho(n, dst, count, true, 10*time.Second); err != nil {
		t.Fatal(err)
	}
}

// tryEcho is echo returning its failure; with probe it first waits for
// the guest's buffers to reach the NIC.
func tryEcho(n *simNIC, dst [6]byte, count int, probe bool, timeout time.Duration) error {
	gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(dst[:]), FrameSize: 256}, n.pf)
	if err != nil {
		return err
	}
	deadline := time.Now().Add(timeout)
	// Until the port has started the NIC queue with the guest's buffers
	// (its first polls after the guest is ready), frames are dropped:
	// probe until one comes back, then let stragglers land.
	for start := n.sink.Stats().Received; probe && n.sink.Stats().Received == start; {
		gen.Emit(1)
		for wait := time.Now().Add(100 * time.Millisecond); n.sink.Stats().Received == start && time.Now().Before(wait); {
			time.Sleep(time.Millisecond)
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: no probe came back through the guest (sim %+v)", n.pf.Address(), n.pf.Counters())
		}
	}
	if probe {
		time.Sleep(50 * time.Millisecond)
	}
	before := n.sink.Stats().Received
	back := func() int { return int(n.sink.Stats().Received - before) }
	for sent := 0; back() < count; {
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: sink got %d of %d probes back, %d sent (sim %+v)", n.pf.Address(), back(), count, sent, n.pf.Counters())
		}
		if k := min(count-sent, echoInFlight-max(0, sent-back())); k > 0 {
			gen.Emit(k)
			sent += k
			continue
		}
		time.Sleep(100 * time.Microsecond)
	}
	if b := back(); b != count {
		return fmt.Errorf("%s: sink got %d probes back, %d sent", n.pf.Address(), b, count)
	}
	return nil
}

// startEcho connects an echoing guest to sock once the appliance serves
// it, and waits until its receive buffers are on the NIC.
func startEcho(t *testing.T, a *Appliance, sock string) *simguest.Echo {
	t.Helper()
	e, err := simguest.StartEcho(sock)
	if err != nil {
		t.Fatal(err)
	}
	testwait.For(t, "the guest's buffers to be posted", func() bool {
		for _, g := range a.Guests() {
			if g.Socket == sock {
				return g.Ready
			}
		}
		return false
	})
	return e
}

var nicMAC = sim.DefaultOptions().MAC

// TestShutdownReleasesGuestsInOrder shuts the appliance down while a
// zero-copy guest echoes traffic that keeps arriving from the wire, so the
// NIC holds the guest's receive buffers and transmit packets to the last
// moment. Shutdown must stop every channel (its NIC queues stopped and
// the guest's buffers taken back) before guest memory leaves the NIC's
// IOMMU domain: no DMA fault, no guest region left mapped, and every port
// closed (a port left open stays attached to its guest and would start its
// NIC queues again if anything polled it).
func TestShutdownReleasesGuestsInOrder(t *testing.T) {
	nics := newSimNICs(t)
	sock := filepath.Join(t.TempDir(), "vm.sock")
	spec := testSpec(t, "sim:0")
	spec.NICs[0].Guests = []GuestSpec{{Socket: sock}}
	a := openTest(t, spec, nics)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, a, sock)
	defer e.Close()
	n := nics.nics["sim:0"]
	echo(t, n, nicMAC, 100)
	gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(nicMAC[:]), FrameSize: 256, Rate: 20000}, n.pf)
	if err != nil {
		t.Fatal(err)
	}
	if err := gen.Start(); err != nil {
		t.Fatal(err)
	}
	defer gen.Stop()
	start := n.sink.Stats().Received
	testwait.For(t, "frames to come back through the guest", func() bool { return n.sink.Stats().Received >= start+50 })
	g := a.guests[0]
	ports, dma := g.channels, g.dma
	if st := ports[0].Stats(); st.RxZeroCopy == 0 || st.TxZeroCopy == 0 {
		t.Fatalf("the guest is not served zero-copy both ways, the NIC holds none of its memory: %+v", st)
	}

	if err := a.Shutdown(); err != nil {
		t.Fatalf("Shutdown: %v", err)
	}
	gen.Stop()
	if c := n.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("%d IOMMU faults (last at IOVA %#x): the NIC reached guest memory after it was unmapped", c.IOMMUFaults, c.LastFaultIOVA)
	}
	if k := dma.Mapped(); k != 0 {
		t.Errorf("%d guest regions still DMA-mapped after shutdown", k)
	}
	for _, p := range ports {
		if err := p.Err(); !errors.Is(err, engine.ErrClosed) {
			t.Errorf("%s after shutdown: Err() = %v, want the channel closed", p.Name(), err)
		}
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket %s left behind after shutdown (%v)", sock, err)
	}
}

// crashingTask panics on its tenth poll, standing in for a bug in a task.
type crashingTask struct{ polls atomic.Int64 }

func (*crashingTask) Name() string { return "crasher" }
func (c *crashingTask) Poll() int {
	if c.polls.Add(1) == 10 {
		panic("test: a bug in a poll round")
	}
	return 0
}

// TestLcoreDeathIsReported: a task panicking on an lcore is reported on
// Failed at once, naming the task, for the program to stop on.
func TestLcoreDeathIsReported(t *testing.T) {
	nics := newSimNICs(t)
	spec := testSpec(t, "sim:0")
	spec.NICs[0].Guests = []GuestSpec{{Socket: filepath.Join(t.TempDir(), "vm.sock")}}
	a := openTest(t, spec, nics, WithTask(&crashingTask{}))
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-a.Failed():
		var pe *pollmode.TaskPanicError
		if !errors.As(err, &pe) || pe.Task != "crasher" {
			t.Fatalf("Failed delivered %v, want the task panic of crasher", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no lcore failure reported 10 s after the task panicked")
	}
}

// openFDs counts the process's open file descriptors.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// TestGuestsComeAndGo adds a guest on a second NIC port while a first
// guest carries traffic, has it echo, and removes it: 100 times, sometimes
// with its traffic still arriving. The steady guest loses no frame and its
// lcore (which polls both) never stops; each removal stops the guest's NIC
// queues before unmapping its memory (no IOMMU fault), leaves nothing
// mapped, closes its socket and takes its MAC out of the NIC's filter; and
// the process's fds and goroutines end where they were.
func TestGuestsComeAndGo(t *testing.T) {
	const cycles = 100
	nics := newSimNICs(t)
	dir := t.TempDir()
	steady, visitor := filepath.Join(dir, "steady.sock"), filepath.Join(dir, "visitor.sock")
	spec := testSpec(t, "sim:0", "sim:1")
	spec.NICs[0].Guests = []GuestSpec{{Socket: steady}}
	a := openTest(t, spec, nics)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, a, steady)
	defer e.Close()
	n0, n1 := nics.nics["sim:0"], nics.nics["sim:1"]
	echo(t, n0, nicMAC, 64)

	// The steady guest's traffic runs throughout, paced so that only the
	// data path can lose a frame.
	stop := make(chan struct{})
	steadyErr := make(chan error, 1)
	var steadyRounds atomic.Int64
	go func() {
		for {
			select {
			case <-stop:
				steadyErr <- nil
				return
			default:
			}
			if err := tryEcho(n0, nicMAC, 64, false, 10*time.Second); err != nil {
				steadyErr <- err
				return
			}
			steadyRounds.Add(1)
		}
	}()
	defer func() {
		select {
		case <-stop:
		default:
			close(stop)
		}
	}()

	visitorMAC := [6]byte{0x52, 0x54, 0x00, 0xab, 0xcd, 0x01}
	var fds, goroutines int
	// Every IOVA the visitor's port takes (copy buffers, guest memory)
	// goes back when it leaves.
	iovaFree := a.nics[1].alloc.FreeBytes()
	for i := range cycles {
		if i == 1 { // after the first cycle has made whatever lasts (pools, the runtime's)
			fds, goroutines = openFDs(t), runtime.NumGoroutine()
		}
		info, err := a.AddGuest("sim:1", GuestSpec{Socket: visitor, MAC: "52:54:00:ab:cd:01"})
		if err != nil {
			t.Fatalf("cycle %d: AddGuest: %v", i, err)
		}
		if info.NIC != "sim:1" || len(info.Queues) != 1 || info.Queues[0] != 0 || info.MAC != "52:54:00:ab:cd:01" {
			t.Fatalf("cycle %d: AddGuest gave %+v", i, info)
		}
		v := startEcho(t, a, visitor)
		if i%10 == 0 {
			echo(t, n1, visitorMAC, 16)
		}
		if i%3 == 0 {
			// Removed with its traffic still arriving and in flight.
			gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(visitorMAC[:]), FrameSize: 256}, n1.pf)
			if err != nil {
				t.Fatal(err)
			}
			gen.Emit(24)
		}
		if err := a.RemoveGuest(visitor); err != nil {
			t.Fatalf("cycle %d: RemoveGuest: %v", i, err)
		}
		if _, err := os.Stat(visitor); !os.IsNotExist(err) {
			t.Fatalf("cycle %d: socket still there after RemoveGuest (%v)", i, err)
		}
		if k := a.nics[1].port.Addresses(); len(k) != 0 {
			t.Fatalf("cycle %d: the NIC's filter still accepts guest addresses %v after the guest left", i, k)
		}
		if f := a.nics[1].alloc.FreeBytes(); f != iovaFree {
			t.Fatalf("cycle %d: %d bytes of the NIC's IOVA space free after the guest left, %d before it came", i, f, iovaFree)
		}
		if c := n1.pf.Counters(); c.IOMMUFaults != 0 {
			t.Fatalf("cycle %d: %d IOMMU faults: the NIC reached the removed guest's memory", i, c.IOMMUFaults)
		}
		v.Close()
		select {
		case err := <-a.Failed():
			t.Fatalf("cycle %d: an lcore stopped: %v", i, err)
		default:
		}
	}
	close(stop)
	if err := <-steadyErr; err != nil {
		t.Fatalf("the steady guest lost traffic while the other came and went: %v", err)
	}
	if steadyRounds.Load() == 0 {
		t.Fatal("the steady guest's traffic never completed a round during the cycles")
	}
	if gs := a.Guests(); len(gs) != 1 || gs[0].Socket != steady {
		t.Fatalf("guests after the cycles: %+v, want only the steady one", gs)
	}
	st := a.guests[0].channels[0].Stats()
	if st.Drops != (engine.Drops{}) || st.Restarts != 0 {
		t.Fatalf("the steady guest's port dropped or restarted: %+v", st)
	}
	// The removed guests' goroutines (their sessions, their echo loops)
	// end shortly after; none may stay.
	testwait.For(t, "fds and goroutines back to where the cycles started", func() bool {
		return openFDs(t) <= fds && runtime.NumGoroutine() <= goroutines
	})
	t.Logf("%d add/remove cycles while the steady guest echoed %d rounds of 64 probes; fds %d, goroutines %d",
		cycles, steadyRounds.Load(), openFDs(t), runtime.NumGoroutine())
}

// TestApplyChangesOnlyWhatChanged: a re-read configuration that removes
// one guest and adds another leaves the guest it lists as before running
// untouched (same channel, session up, traffic on), changes a guest
// whose settings changed, and refuses a change to a NIC port whole.
func TestApplyChangesOnlyWhatChanged(t *testing.T) {
	nics := newSimNICs(t)
	dir := t.TempDir()
	sa, sb, sc := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock"), filepath.Join(dir, "c.sock")
	spec := testSpec(t, "sim:0", "sim:1", "sim:2")
	spec.NICs[0].Guests = []GuestSpec{{Socket: sa}}
	spec.NICs[1].Guests = []GuestSpec{{Socket: sb}}
	spec.NICs[2].MaxGuests = 1
	a := openTest(t, spec, nics)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	e := startEcho(t, a, sa)
	defer e.Close()
	echo(t, nics.nics["sim:0"], nicMAC, 32)
	portA := a.guests[0].channels[0]

	next := testSpec(t, "sim:0", "sim:1", "sim:2")
	next.NICs[0].Guests = []GuestSpec{{Socket: sa}}
	next.NICs[1].MaxGuests = 1
	next.NICs[2].Guests = []GuestSpec{{Socket: sc}}
	changes, err := a.Apply(next)
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"removed " + sb, "added " + sc}; fmt.Sprint(changes) != fmt.Sprint(want) {
		t.Fatalf("Apply did %q, want %q", changes, want)
	}
	if a.guests[0].channels[0] != portA || portA.Stats().Restarts != 0 {
		t.Fatalf("the unchanged guest's port was replaced or restarted: %+v", portA.Stats())
	}
	echo(t, nics.nics["sim:0"], nicMAC, 32)
	if _, err := os.Stat(sb); !os.IsNotExist(err) {
		t.Fatalf("the removed guest's socket is still there (%v)", err)
	}
	if _, err := os.Stat(sc); err != nil {
		t.Fatalf("the added guest's socket is not there: %v", err)
	}

	next.NICs[0].Guests[0].MAC = "52:54:00:00:00:0a"
	if changes, err = a.Apply(next); err != nil || fmt.Sprint(changes) != fmt.Sprint([]string{"changed " + sa}) {
		t.Fatalf("Apply with a new MAC for %s did %q, %v", sa, changes, err)
	}
	if gs := a.Guests(); len(gs) != 2 || gs[1].Socket != sa || gs[1].MAC != "52:54:00:00:00:0a" {
		t.Fatalf("guests after the change: %+v", gs)
	}

	bad := next
	bad.NICs = append([]NICSpec(nil), next.NICs...)
	bad.NICs[2].Rxd = 512
	bad.NICs[2].Guests = nil
	before := a.Guests()
	if changes, err = a.Apply(bad); err == nil || !strings.Contains(err.Error(), "restart zcnet") || changes != nil {
		t.Fatalf("Apply changing a NIC's ring size did %q, %v; want it refused", changes, err)
	}
	if after := a.Guests(); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Fatalf("a refused Apply changed the guests: %+v, before %+v", after, before)
	}
}

// TestGuestsOfferMigrationByDefault: a guest is offered live migration
// (VHOST_F_LOG_ALL, and the LOG_SHMFD and RARP protocol features) unless
// its spec says migration: false, as QEMU needs all three to migrate it;
// Equal treats an unset Migration as true.
func TestGuestsOfferMigrationByDefault(t *testing.T) {
	nics := newSimNICs(t)
	dir := t.TempDir()
	spec := testSpec(t, "sim:0")
	spec.NICs[0].MaxGuests = 2
	off, on := false, true
	byDefault, refused := filepath.Join(dir, "default.sock"), filepath.Join(dir, "off.sock")
	spec.NICs[0].Guests = []GuestSpec{{Socket: byDefault}, {Socket: refused, Migration: &off}}
	a := openTest(t, spec, nics)
	if err := a.Run(context.Background()); err != nil {
		t.Fatal(err)
	}
	offered := func(sock string) (features, protocol uint64) {
		uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: sock, Net: "unix"})
		if err != nil {
			t.Fatal(err)
		}
		fe, err := simguest.NewFrontend(uc)
		if err != nil {
			t.Fatal(err)
		}
		defer fe.Close()
		if features, err = fe.U64(vhost.ReqGetFeatures); err != nil {
			t.Fatal(err)
		}
		if protocol, err = fe.U64(vhost.ReqGetProtocolFeatures); err != nil {
			t.Fatal(err)
		}
		return features, protocol
	}
	const migrationProto = vhost.ProtoFLogShmfd | vhost.ProtoFRARP
	if f, p := offered(byDefault); f&vhost.FLogAll == 0 || p&migrationProto != migrationProto {
		t.Errorf("guest with migration unset: features %#x, protocol features %#x: want LOG_ALL, LOG_SHMFD and RARP offered", f, p)
	}
	if f, p := offered(refused); f&vhost.FLogAll != 0 || p&migrationProto != 0 {
		t.Errorf("guest with migration: false: features %#x, protocol features %#x: want neither LOG_ALL nor LOG_SHMFD nor RARP", f, p)
	}
	if !(GuestSpec{Socket: "a"}).Equal(GuestSpec{Socket: "a", Migration: &on}) || (GuestSpec{Socket: "a"}).Equal(GuestSpec{Socket: "a", Migration: &off}) {
		t.Error("Equal: an unset Migration must equal true and differ from false")
	}
}
