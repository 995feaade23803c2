package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
)

// testOpener opens the NIC functions of the commands the tests run:
// vfio.Open unless useSimDevices replaced it.
var testOpener appliance.Opener = func(addr string) (vfio.Device, error) { return vfio.Open(addr) }

// simFactory stands in for vfio.Open: every address opens a started
// simulated 82599 of the rig's whose wire is a sink; "missing..." opens
// nothing.
type simFactory struct{ ports rig.Ports }

func useSimDevices(t *testing.T) *simFactory {
	f := &simFactory{}
	old := testOpener
	testOpener = func(addr string) (vfio.Device, error) {
		if strings.HasPrefix(addr, "missing") {
			return nil, fmt.Errorf("no such device %s", addr)
		}
		return f.ports.Open(addr)
	}
	t.Cleanup(func() { testOpener = old })
	return f
}

func (f *simFactory) pf(addr string) (*sim.PF, *wire.Sink) {
	return f.ports.PF(addr), f.ports.Sink(addr)
}

// startRun runs `zcnet run args...` in the background; the returned func
// sends SIGINT's equivalent (context cancellation) and returns the output
// and error.
func startRun(args ...string) func() (string, error) {
	ctx, cancel := context.WithCancel(context.Background())
	cmd := newRootCommandWith(testOpener)
	var out strings.Builder
	var mu sync.Mutex
	cmd.SetOut(writerFunc(func(p []byte) (int, error) { mu.Lock(); defer mu.Unlock(); return out.Write(p) }))
	if !slices.Contains(args, "--control") {
		// A control socket of its own: the default path is the host's.
		dir, err := os.MkdirTemp("", "zcnet-test-")
		if err != nil {
			panic(err)
		}
		args = append(args, "--control", filepath.Join(dir, "control.sock"))
	}
	cmd.SetArgs(append([]string{"run", "--stats-period", "0"}, args...))
	done := make(chan error, 1)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	return func() (string, error) {
		cancel()
		err := <-done
		mu.Lock()
		defer mu.Unlock()
		return out.String(), err
	}
}

type writerFunc func([]byte) (int, error)

func (w writerFunc) Write(p []byte) (int, error) { return w(p) }

// echoThrough sends n probes into pf and waits until the sink has them
// all back from the guest.
func echoThrough(t *testing.T, pf *sim.PF, sink *wire.Sink, n int) {
	t.Helper()
	gen, err := wire.NewGenerator(wire.GeneratorConfig{DstMAC: wire.MAC(rig.PortMAC(pf.Address())), FrameSize: 256}, pf)
	if err != nil {
		t.Fatal(err)
	}
	// Until the guest's buffers are on the NIC, frames are dropped:
	// probe until one comes back.
	deadline := time.Now().Add(10 * time.Second)
	for start := sink.Stats().Received; sink.Stats().Received == start; time.Sleep(10 * time.Millisecond) {
		gen.Emit(1)
		if time.Now().After(deadline) {
			t.Fatalf("no frame came back through the guest (sim %+v)", pf.Counters())
		}
	}
	echoWith(t, gen, pf, sink, n)
}

// echoInFlight bounds the probes echoWith has on their way through the
// guest: far fewer than the NIC's and the guest's receive rings hold, so
// that however late the poll cores and the guest run on a loaded machine,
// no probe finds the NIC without a buffer.
const echoInFlight = 32

// echoWith sends n of gen's probes into pf and waits until the sink has
// them all back from the echoing guest. It sends as the probes come back,
// never more than echoInFlight ahead, so nothing may be lost.
func echoWith(t *testing.T, gen *wire.Generator, pf *sim.PF, sink *wire.Sink, n int) {
	t.Helper()
	before := sink.Stats().Received
	back := func() int { return int(sink.Stats().Received - before) }
	deadline := time.Now().Add(10 * time.Second)
	for sent := 0; back() < n; {
		if time.Now().After(deadline) {
			t.Fatalf("sink got %d of %d frames back, %d sent (sim %+v)", back(), n, sent, pf.Counters())
		}
		if k := min(n-sent, echoInFlight-max(0, sent-back())); k > 0 {
			gen.Emit(k)
			sent += k
			continue
		}
		time.Sleep(100 * time.Microsecond)
	}
}

// dialEcho connects an echoing test guest to a zcnet listening on path.
func dialEcho(t *testing.T, path string) *guest.Echo {
	t.Helper()
	e, err := guest.StartEcho(path)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func waitSocket(t *testing.T, path string) {
	t.Helper()
	for range 500 {
		if _, err := os.Stat(path); err == nil {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("%s never appeared", path)
}

func checkShutdown(t *testing.T, stop func() (string, error), pfs ...*sim.PF) {
	t.Helper()
	out, err := stop()
	if err != nil {
		t.Fatalf("zcnet run: %v\n%s", err, out)
	}
	if !strings.Contains(out, "summary after") {
		t.Errorf("no summary:\n%s", out)
	}
	for _, pf := range pfs {
		if c := pf.Counters(); c.IOMMUFaults != 0 {
			t.Errorf("%d IOMMU faults: DMA after unmap", c.IOMMUFaults)
		}
	}
}

// TestRunServesGuestOnPF: one PF, one vhost-user socket in server mode;
// frames go wire -> NIC -> guest -> NIC -> wire, telemetry sees them
// zero-copy, and shutdown leaves no DMA behind an unmap.
func TestRunServesGuestOnPF(t *testing.T) {
	f := useSimDevices(t)
	dir := t.TempDir()
	sock, tel := filepath.Join(dir, "vm1.sock"), filepath.Join(dir, "tel.sock")
	stop := startRun("--pci", "0000:03:00.0", "--vhost", sock, "--rxd", "256", "--txd", "256", "--telemetry", tel)
	waitSocket(t, sock)
	g := dialEcho(t, sock)
	pf, sink := f.pf("0000:03:00.0")
	echoThrough(t, pf, sink, 200)
	s := waitTelemetry(t, tel)
	if s.Command != "run" || s.Totals().ZeroCopy < 400 {
		t.Errorf("telemetry: %+v", s.Totals())
	}
	checkShutdown(t, stop, pf)
	g.Close()
}

// TestRunClientModeReconnects: zcnet connects to a front end listening on
// the socket, and connects again after the front end went away.
func TestRunClientModeReconnects(t *testing.T) {
	f := useSimDevices(t)
	sock := filepath.Join(t.TempDir(), "qemu.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	stop := startRun("--pci", "0000:04:00.0", "--vhost", sock, "--vhost-client", "--rxd", "256", "--txd", "256", "--telemetry", "")
	accept := func() *guest.Echo {
		_ = l.SetDeadline(time.Now().Add(5 * time.Second))
		uc, err := l.AcceptUnix()
		if err != nil {
			t.Fatalf("zcnet did not connect: %v", err)
		}
		g, err := guest.New(guest.EchoOptions)
		if err != nil {
			t.Fatal(err)
		}
		if err := g.Attach(uc); err != nil {
			t.Fatal(err)
		}
		e, err := guest.RunEcho(g)
		if err != nil {
			t.Fatal(err)
		}
		return e
	}
	e := accept()
	pf, sink := f.pf("0000:04:00.0")
	echoThrough(t, pf, sink, 100)
	e.Close() // the front end goes away ...
	e = accept()
	echoThrough(t, pf, sink, 100) // ... and traffic flows again after zcnet reconnects
	checkShutdown(t, stop, pf)
	e.Close()
}

// TestRunConfigFile: two VFs-worth of ports from a JSON file, one guest
// each, each in its own IOMMU domain.
func TestRunConfigFile(t *testing.T) {
	f := useSimDevices(t)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "zcnet.json")
	s1, s2 := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	cpu := fmt.Sprint(lastCPU(t))
	body := fmt.Sprintf(`{"lcores": %q, "nics": [
	  {"pci": "0000:05:10.0", "rxd": 256, "txd": 256, "guests": [{"socket": %q}]},
	  {"pci": "0000:05:10.2", "rxd": 128, "txd": 128, "mtu": 1500, "guests": [{"socket": %q}]}]}`, cpu, s1, s2)
	if err := os.WriteFile(cfg, []byte(body), 0o600); err != nil {
		t.Fatal(err)
	}
	stop := startRun("--config", cfg, "--telemetry", "")
	waitSocket(t, s1)
	waitSocket(t, s2)
	g1, g2 := dialEcho(t, s1), dialEcho(t, s2)
	pf1, sink1 := f.pf("0000:05:10.0")
	pf2, sink2 := f.pf("0000:05:10.2")
	echoThrough(t, pf1, sink1, 100)
	echoThrough(t, pf2, sink2, 100)
	checkShutdown(t, stop, pf1, pf2)
	g1.Close()
	g2.Close()
}

func lastCPU(t *testing.T) int {
	cpus, err := pollmode.PollCPUs("")
	if err != nil {
		t.Fatal(err)
	}
	return cpus[0]
}

func TestRunVhostFlagErrors(t *testing.T) {
	useSimDevices(t)
	dir := t.TempDir()
	sock := filepath.Join(dir, "g.sock")
	badJSON := filepath.Join(dir, "bad.json")
	os.WriteFile(badJSON, []byte(`{"nics": [{"pci": "x", "guestz": []}]}`), 0o600)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{}, "--pci"},
		{[]string{"--pci", "0000:01:00.0"}, "--vhost"},
		{[]string{"--pci", "a", "--pci", "b", "--pci", "c", "--vhost", sock}, "one --pci per socket"},
		{[]string{"--pci", "a", "--vhost", sock, "--rxq", "2", "--txq", "1"}, "--rxq 2 and --txq 1"},
		{[]string{"--pci", "a", "--vhost", sock, "--rxq", "0", "--txq", "0"}, "queue pair"},
		{[]string{"--pci", "a", "--vhost", sock, "--rxq", "65", "--txq", "65"}, "64 queue pairs"},
		{[]string{"--pci", "a", "--vhost", sock, "--rxd", "1000"}, "--rxd 1000"},
		{[]string{"--pci", "a", "--vhost", sock, "--txd", "8192"}, "--txd 8192"},
		{[]string{"--pci", "a", "--vhost", sock, "--mtu", "20000"}, "--mtu"},
		{[]string{"--pci", "a", "--vhost", sock, "--copy-break", "256"}, "copies all frames or none"},
		{[]string{"--pci", "a", "--vhost", sock, "--copy-break", "-1"}, "--copy-break -1"},
		{[]string{"--pci", "a", "--vhost", sock, "--vhost", sock}, "given twice"},
		{[]string{"--pci", "a", "--vhost", sock, "--vhost", sock + "2", "--rxq", "3", "--txq", "3"}, "1, 2 or 4"},
		{[]string{"--pci", "a", "--vhost", sock, "--burst", "0"}, "burst"},
		{[]string{"--pci", "a", "--vhost", sock, "-l", "0-1"}, "at most 1"},
		{[]string{"--pci", "missing0", "--vhost", sock}, "no such device"},
		{[]string{"--config", badJSON}, "unknown field"},
		{[]string{"--config", filepath.Join(dir, "zcnet.toml")}, "as YAML (.yaml, .yml) or JSON (.json)"},
		{[]string{"--config", filepath.Join(dir, "none.json")}, "no such file"},
		{[]string{"--config", badJSON, "--pci", "a"}, "--pci and --config"},
		{[]string{"--config", badJSON, "--no-packed"}, "--no-packed and --config"},
		{[]string{"--pci", "a", "--vhost", sock + ",mac=01:00:5e:00:00:01"}, "multicast"},
		{[]string{"--pci", "a", "--vhost", sock + ",mac=00:00:00:00:00:00"}, "all zero"},
		{[]string{"--pci", "a", "--vhost", sock + ",mac=52:54:00"}, "6 bytes"},
	} {
		args := append([]string{"run", "--duration", "10ms", "--telemetry", ""}, c.args...)
		if _, err := execute(args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("zcnet %s: err = %v, want it to mention %q", strings.Join(args, " "), err, c.want)
		}
	}
}
