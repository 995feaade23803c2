package dpdk_test

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zcnet/zcnet/pollmode"
)

const (
	testpmdBinary = "dpdk-testpmd"
	// stdbuf (coreutils) makes testpmd's stdout unbuffered: into a pipe
	// it would be block-buffered, and the lines the tests wait for would
	// arrive only at exit.
	stdbufBinary = "stdbuf"
	hugepageDir  = "/sys/kernel/mm/hugepages/hugepages-2048kB"

	// hugepagesPerTestpmd is what one testpmd with mbufPool mbufs takes, with
	// room to spare (measured: 17 to 34 pages of 2 MiB).
	hugepagesPerTestpmd = 48
	// mbufPool keeps testpmd's start-up (and hugepage use) small; the
	// default pool is 155456 mbufs, 330 MiB.
	mbufPool = 8192

	// ealRuntimeDir is where DPDK's EAL keeps per-prefix runtime files
	// when run as root (the tests need root for hugepages).
	ealRuntimeDir = "/var/run/dpdk"

	startTimeout = 30 * time.Second // EAL init, mempool, port start
	stopTimeout  = 20 * time.Second // stop forwarding, print, close ports
)

// host is what a test needs from the machine: the testpmd binary and the
// CPUs to run on.
type host struct {
	testpmd, stdbuf string
	// backendCPU runs zcnet's poller; frontendCPU runs testpmd's
	// forwarding lcore. testpmd's main lcore (idle: it waits on stdin)
	// shares backendCPU.
	backendCPU, frontendCPU int
}

// checkHost fails the test, saying what to install or configure, unless
// dpdk-testpmd, enough free 2 MiB hugepages for nTestpmd processes, a
// hugetlbfs mount and two CPUs are available.
func checkHost(t testing.TB, nTestpmd int) host {
	t.Helper()
	path, err := exec.LookPath(testpmdBinary)
	if err != nil {
		t.Fatalf("%s not found (%v): these tests need DPDK's testpmd; install it with `apt-get install dpdk-dev` (Debian 12 ships DPDK 22.11; the `dpdk` package alone does not include testpmd)", testpmdBinary, err)
	}
	stdbuf, err := exec.LookPath(stdbufBinary)
	if err != nil {
		t.Fatalf("%s not found (%v): install coreutils", stdbufBinary, err)
	}
	free, err := os.ReadFile(hugepageDir + "/free_hugepages")
	if err != nil {
		t.Fatalf("2 MiB hugepages are not available (%v): reserve them with `make hugepages`", err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(free)))
	if err != nil {
		t.Fatalf("parse %s/free_hugepages %q: %v", hugepageDir, free, err)
	}
	if want := nTestpmd * hugepagesPerTestpmd; n < want {
		t.Fatalf("only %d free 2 MiB hugepages, testpmd needs %d here (%d per process): reserve more with `make hugepages` or `echo 1024 > %s/nr_hugepages`", n, want, hugepagesPerTestpmd, hugepageDir)
	}
	mounts, err := os.ReadFile("/proc/mounts")
	if err != nil {
		t.Fatalf("read /proc/mounts: %v", err)
	}
	if !bytes.Contains(mounts, []byte(" hugetlbfs ")) {
		t.Fatalf("no hugetlbfs mount: DPDK's EAL needs one to find hugepages; `make hugepages` mounts /dev/hugepages")
	}
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) < 2 {
		t.Fatalf("allowed CPUs %v: these tests need two, one for zcnet's poller and one for testpmd's forwarding lcore", cpus)
	}
	return host{testpmd: path, stdbuf: stdbuf, backendCPU: cpus[0], frontendCPU: cpus[1]}
}

// eal returns the EAL arguments for a testpmd whose forwarding lcore runs
// on fwdCPU and main lcore on mainCPU. --in-memory keeps no files in
// /dev/hugepages or /var/run/dpdk, so a killed run leaves nothing behind;
// --single-file-segments makes every memseg list one fd, which virtio-user
// needs to share its memory over vhost-user; the file prefix keeps
// concurrent runs apart.
func eal(mainCPU, fwdCPU int, prefix string, vdev string) []string {
	return []string{
		"-l", fmt.Sprintf("%d,%d", mainCPU, fwdCPU), "--main-lcore", strconv.Itoa(mainCPU),
		"--no-pci", "--in-memory", "--single-file-segments",
		"--file-prefix", fmt.Sprintf("zcnet%d-%s", os.Getpid(), prefix),
		"--vdev", vdev,
	}
}

// testpmd is one dpdk-testpmd process, driven through its standard input.
// In non-interactive mode it starts forwarding at once and stops, prints
// its counters and exits when a line arrives. In interactive mode (-i,
// with --auto-start) it also forwards at once and then takes commands:
// "stop" stops forwarding and prints the counters but leaves the port up,
// "quit" closes the port and exits.
type testpmd struct {
	t           testing.TB
	name        string
	interactive bool
	cmd         *exec.Cmd
	stdin       io.WriteCloser
	out         lockedBuffer
	done        chan struct{} // closed when the process has been reaped
	err         error         // Wait's result, valid after done
}

// lockedBuffer collects a process's output while tests read it.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// startTestpmd launches testpmd in its own process group. Whatever
// happens, the group is killed when the test ends, and testpmd's output is
// written to the test log if the test failed.
func startTestpmd(t testing.TB, h host, name string, ealArgs, appArgs []string) *testpmd {
	t.Helper()
	args := append(append(append([]string{"-o0", "-e0", h.testpmd}, ealArgs...), "--"), appArgs...)
	p := &testpmd{t: t, name: name, done: make(chan struct{})}
	for _, a := range appArgs {
		p.interactive = p.interactive || a == "-i" || a == "--interactive"
	}
	p.cmd = exec.Command(h.stdbuf, args...)
	p.cmd.Stdout = &p.out
	p.cmd.Stderr = &p.out
	// Its own process group, so that cleanup reaches anything it forks;
	// and killed if this test binary dies first.
	p.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	p.cmd.WaitDelay = 5 * time.Second
	stdin, err := p.cmd.StdinPipe()
	if err != nil {
		t.Fatalf("%s: stdin pipe: %v", name, err)
	}
	p.stdin = stdin
	t.Logf("%s: %s", name, strings.Join(p.cmd.Args, " "))
	if err := p.cmd.Start(); err != nil {
		t.Fatalf("%s: start %s: %v", name, h.testpmd, err)
	}
	go func() {
		p.err = p.cmd.Wait()
		close(p.done)
	}()
	t.Cleanup(func() {
		p.kill()
		// Even with --in-memory, EAL creates an (empty) runtime directory
		// named after the file prefix; remove it so that runs leave
		// nothing behind.
		for i, a := range ealArgs {
			if a == "--file-prefix" && i+1 < len(ealArgs) {
				_ = os.RemoveAll(filepath.Join(ealRuntimeDir, ealArgs[i+1]))
			}
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, p.out.String())
		}
	})
	return p
}

// kill ends the whole process group at once and reaps testpmd.
func (p *testpmd) kill() {
	select {
	case <-p.done:
		return
	default:
	}
	_ = syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
}

// exited reports whether testpmd is gone.
func (p *testpmd) exited() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

// waitForwarding waits until testpmd has started its ports and forwarding
// ("Press enter to exit", or the prompt in interactive mode), failing the
// test if it exits or times out.
func (p *testpmd) waitForwarding() {
	p.t.Helper()
	marker := "Press enter to exit"
	if p.interactive {
		marker = "testpmd> "
	}
	p.waitOutput(0, startTimeout, "start forwarding", func(out string) bool { return strings.Contains(out, marker) })
}

// waitOutput waits until done accepts testpmd's output from offset from
// on, failing the test if testpmd exits first or the timeout passes.
func (p *testpmd) waitOutput(from int, timeout time.Duration, what string, done func(string) bool) string {
	p.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		out := p.out.String()[from:]
		if done(out) {
			return out
		}
		if p.exited() {
			p.t.Fatalf("%s exited before it did %s (%v); see its output below", p.name, what, p.err)
		}
		if time.Now().After(deadline) {
			p.t.Fatalf("%s did not %s within %v", p.name, what, timeout)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// stopForwarding stops an interactive testpmd's forwarding, leaving its
// port up, and returns its counters.
func (p *testpmd) stopForwarding() fwdStats {
	p.t.Helper()
	if !p.interactive {
		p.t.Fatalf("%s: stopForwarding needs interactive mode", p.name)
	}
	from := len(p.out.String())
	_, _ = io.WriteString(p.stdin, "stop\n")
	out := p.waitOutput(from, stopTimeout, "stop forwarding", func(out string) bool {
		_, err := parseAccumulated(out)
		return err == nil
	})
	s, _ := parseAccumulated(out)
	return s
}

// quit ends an interactive testpmd.
func (p *testpmd) quit() {
	p.t.Helper()
	_, _ = io.WriteString(p.stdin, "quit\n")
	p.waitExit()
}

// waitExit waits for testpmd to exit by itself and checks its status.
func (p *testpmd) waitExit() {
	p.t.Helper()
	select {
	case <-p.done:
	case <-time.After(stopTimeout):
		p.kill()
		p.t.Fatalf("%s did not exit within %v of being asked to", p.name, stopTimeout)
	}
	if p.err != nil {
		p.t.Errorf("%s exited with %v", p.name, p.err)
	}
}

// stop asks a non-interactive testpmd to stop forwarding and exit, and
// returns its final counters.
func (p *testpmd) stop() fwdStats {
	p.t.Helper()
	if p.interactive {
		p.t.Fatalf("%s: stop is for non-interactive mode; use stopForwarding and quit", p.name)
	}
	// Any line on stdin ends a non-interactive testpmd: it stops the
	// forwarding lcores, prints the accumulated statistics, stops and
	// closes its ports (GET_VRING_BASE for a virtio-user port) and exits.
	_, _ = io.WriteString(p.stdin, "\n")
	p.waitExit()
	s, err := parseAccumulated(p.out.String())
	if err != nil {
		p.t.Fatalf("%s: %v", p.name, err)
	}
	return s
}

// fwdStats are testpmd's "Accumulated forward statistics for all ports".
// RX-dropped counts frames the port missed or had no mbuf for; TX-dropped
// counts frames the forwarding engine could not queue for transmission.
type fwdStats struct {
	RxPackets, RxDropped, TxPackets, TxDropped uint64
}

var statLine = regexp.MustCompile(`^\s*(RX|TX)-packets:\s*(\d+)\s+(RX|TX)-dropped:\s*(\d+)`)

// parseAccumulated finds the accumulated statistics block testpmd prints
// when forwarding stops.
func parseAccumulated(out string) (fwdStats, error) {
	i := strings.Index(out, "Accumulated forward statistics for all ports")
	if i < 0 {
		return fwdStats{}, errors.New("no \"Accumulated forward statistics\" in testpmd's output: it did not stop forwarding normally")
	}
	var s fwdStats
	seen := 0
	sc := bufio.NewScanner(strings.NewReader(out[i:]))
	for sc.Scan() && seen < 2 {
		m := statLine.FindStringSubmatch(sc.Text())
		if m == nil {
			continue
		}
		pkts, _ := strconv.ParseUint(m[2], 10, 64)
		dropped, _ := strconv.ParseUint(m[4], 10, 64)
		if m[1] == "RX" {
			s.RxPackets, s.RxDropped = pkts, dropped
		} else {
			s.TxPackets, s.TxDropped = pkts, dropped
		}
		seen++
	}
	if seen != 2 {
		return fwdStats{}, fmt.Errorf("accumulated statistics block is missing its RX or TX line:\n%s", out[i:])
	}
	return s, nil
}

func TestParseAccumulated(t *testing.T) {
	out := `Telling cores to stop...
  ---------------------- Forward statistics for port 0  ----------------------
  RX-packets: 7              RX-dropped: 1             RX-total: 8
  TX-packets: 9              TX-dropped: 2             TX-total: 11
  ----------------------------------------------------------------------------

  +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++
  RX-packets: 11842336       RX-dropped: 3             RX-total: 11842339
  TX-packets: 11842368       TX-dropped: 4             TX-total: 11842372
  ++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++++
`
	got, err := parseAccumulated(out)
	if err != nil {
		t.Fatal(err)
	}
	want := fwdStats{RxPackets: 11842336, RxDropped: 3, TxPackets: 11842368, TxDropped: 4}
	if got != want {
		t.Errorf("parseAccumulated = %+v, want %+v", got, want)
	}
	if _, err := parseAccumulated(out[:strings.Index(out, "  +++")]); err == nil {
		t.Error("parseAccumulated accepted output without the accumulated block")
	}
	if _, err := parseAccumulated(out[:strings.Index(out, "  TX-packets: 1184")]); err == nil {
		t.Error("parseAccumulated accepted a block without its TX line")
	}
}
