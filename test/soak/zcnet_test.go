//go:build soak

package soak

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zcnet/zcnet/test/lib"
)

// zcnetProcess is one `zcnet sim --vhost` process: a simulated 82599 port
// whose wire is zcnet's own traffic generator (towards the guest's MAC)
// and verifying sink (what the guest sends back), serving one external
// guest on a unix socket. The soak runs one per guest, because `zcnet sim`
// simulates one port and several guests on one port are not supported yet.
type zcnetProcess struct {
	name      string
	socket    string // the guest's vhost-user socket
	telemetry string // the instance's `zcnet stats` socket
	cmd       *exec.Cmd
	stdout    bytes.Buffer // --json: the final snapshot, printed at exit
	stderr    *stderrWatch
	exited    chan struct{} // closed once the process is gone and waitErr set
	waitErr   error
}

// schedtracePeriod is how often the zcnet processes dump their goroutines
// (GODEBUG schedtrace with scheddetail): the only way to count the
// goroutines of another Go process without changing it.
const schedtracePeriod = 2 * time.Second

// startZcnet starts `zcnet sim` for one guest: its socket and telemetry
// socket in dir, the poll core on cpu, the generator sending rate frames
// per second of 64 bytes to guestMAC (which the NIC's filter accepts from
// the start, so a reconnecting guest never waits to be learned again).
func startZcnet(bin, dir, name string, cpu int, guestMAC string, rate float64) (*zcnetProcess, error) {
	z := &zcnetProcess{
		name:      name,
		socket:    filepath.Join(dir, name+".sock"),
		telemetry: filepath.Join(dir, name+"-telemetry.sock"),
		exited:    make(chan struct{}),
	}
	z.cmd = exec.Command(bin, "sim", "--vhost", z.socket, "--guest-mac", guestMAC,
		"--rate", strconv.FormatFloat(rate, 'f', 0, 64), "--frame-size", "64", "--flows", "4",
		"--lcores", strconv.Itoa(cpu), "--stats-period", "0", "--json",
		"--telemetry", z.telemetry, "--log-level", "warn")
	z.cmd.Env = append(os.Environ(), fmt.Sprintf("GODEBUG=schedtrace=%d,scheddetail=1", schedtracePeriod.Milliseconds()))
	// zcnet must not outlive the soak, even when the soak panics.
	z.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	z.cmd.Stdout = &z.stdout
	errPipe, err := z.cmd.StderrPipe()
	if err != nil {
		return nil, err
	}
	z.stderr = newStderrWatch(errPipe)
	if err := z.cmd.Start(); err != nil {
		return nil, fmt.Errorf("start %s: %w", bin, err)
	}
	go func() {
		<-z.stderr.done // Wait closes the pipe: read it to the end first
		z.waitErr = z.cmd.Wait()
		close(z.exited)
	}()
	return z, nil
}

// waitReady waits until the instance answers on its telemetry socket,
// which it opens after the vhost-user socket listens.
func (z *zcnetProcess) waitReady(ctx context.Context) error {
	for {
		if _, err := z.snapshot(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%s: not answering on %s: %w\n%s", z.name, z.telemetry, ctx.Err(), z.stderr.tail(20))
		case <-z.exited:
			return z.exitError()
		case <-time.After(50 * time.Millisecond):
		}
	}
}

// alive reports whether the process still runs.
func (z *zcnetProcess) alive() bool {
	select {
	case <-z.exited:
		return false
	default:
		return true
	}
}

// exitError describes an exit that was not asked for.
func (z *zcnetProcess) exitError() error {
	return fmt.Errorf("%s (pid %d) exited: %v\n%s", z.name, z.cmd.Process.Pid, z.waitErr, z.stderr.tail(40))
}

// stop ends the process as an operator does (SIGTERM): zcnet stops its
// generator, lets the frames in flight reach the sink, takes the final
// snapshot, shuts the data path down and prints the snapshot as JSON.
func (z *zcnetProcess) stop(timeout time.Duration) (*snapshot, error) {
	if !z.alive() {
		return nil, z.exitError()
	}
	if err := z.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		return nil, err
	}
	select {
	case <-z.exited:
	case <-time.After(timeout):
		_ = z.cmd.Process.Kill()
		<-z.exited
		return nil, fmt.Errorf("%s did not exit within %v of SIGTERM\n%s", z.name, timeout, z.stderr.tail(40))
	}
	if z.waitErr != nil {
		return nil, fmt.Errorf("%s: %v\n%s", z.name, z.waitErr, z.stderr.tail(40))
	}
	return parseSnapshot(z.stdout.Bytes(), z.name+" final summary")
}

// kill is for cleanup after a failure.
func (z *zcnetProcess) kill() {
	if z.alive() {
		_ = z.cmd.Process.Kill()
		<-z.exited
	}
}

// snapshot reads the running instance's counters from its telemetry
// socket (what `zcnet stats --json` prints).
func (z *zcnetProcess) snapshot() (*snapshot, error) {
	c, err := net.DialTimeout("unix", z.telemetry, 2*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	if err != nil {
		return nil, err
	}
	return parseSnapshot(b, z.name+" telemetry")
}

// --- zcnet's counters ------------------------------------------------------

// snapshot is the part of zcnet's telemetry snapshot (cmd/zcnet Snapshot,
// as JSON) the soak accounts with; every field is required (see
// parseSnapshot).
type snapshot struct {
	NICs    []nicCounters  `json:"nics"`
	Ports   []portCounters `json:"ports"`
	Traffic *simTraffic    `json:"traffic"`
}

type nicCounters struct {
	RxPackets      uint64 `json:"rx_packets"`
	TxPackets      uint64 `json:"tx_packets"`
	RxQueued       uint64 `json:"rx_queued"`
	RxMissed       uint64 `json:"rx_missed"`
	RxNoDescriptor uint64 `json:"rx_no_descriptor"`
	RxCRCErrors    uint64 `json:"rx_crc_errors"`
	RxUndersize    uint64 `json:"rx_undersize"`
	RxFragments    uint64 `json:"rx_fragments"`
	RxOversize     uint64 `json:"rx_oversize"`
	RxJabbers      uint64 `json:"rx_jabbers"`
	RxFiltered     uint64 `json:"rx_filtered"`
}

type portCounters struct {
	RxPackets         uint64            `json:"rx_packets"`
	RxHarvested       uint64            `json:"rx_harvested"`
	RxPending         uint64            `json:"rx_pending"`
	TxPackets         uint64            `json:"tx_packets"`
	ZeroCopy          dirs              `json:"zero_copy"`
	Copied            dirs              `json:"copied"`
	CopyReasons       map[string]uint64 `json:"copy_reasons"`
	Drops             map[string]uint64 `json:"drops"`
	GuestErrors       uint64            `json:"guest_errors"`
	Restarts          uint64            `json:"restarts"`
	GuestMemoryFaults uint64            `json:"guest_memory_faults"`
}

type dirs struct {
	Rx uint64 `json:"rx"`
	Tx uint64 `json:"tx"`
}

type simTraffic struct {
	GeneratorSent  uint64 `json:"generator_sent"`
	SinkReceived   uint64 `json:"sink_received"`
	SinkBad        uint64 `json:"sink_bad_checksums"`
	IOMMUFaults    uint64 `json:"iommu_faults"`
	SimRxNotReady  uint64 `json:"sim_rx_not_ready"`
	SimTxNoLink    uint64 `json:"sim_tx_no_link"`
	SimTxDMAFaults uint64 `json:"sim_tx_dma_faults"`
	SimTxMalformed uint64 `json:"sim_tx_malformed"`
	SimRxDMAFaults uint64 `json:"sim_rx_dma_faults"`
}

// requiredFields are the snapshot's keys the soak's accounting rests on:
// a renamed or removed counter must fail the soak, not read as zero.
var requiredFields = map[string][]string{
	"nics[0]": {"rx_packets", "tx_packets", "rx_queued", "rx_missed", "rx_no_descriptor", "rx_crc_errors", "rx_undersize",
		"rx_fragments", "rx_oversize", "rx_jabbers", "rx_filtered"},
	"ports[0]": {"rx_packets", "rx_harvested", "rx_pending", "tx_packets", "zero_copy", "copied", "copy_reasons", "drops",
		"guest_errors", "restarts", "guest_memory_faults"},
	"traffic": {"generator_sent", "sink_received", "sink_bad_checksums", "iommu_faults", "sim_rx_not_ready",
		"sim_tx_no_link", "sim_tx_dma_faults", "sim_tx_malformed", "sim_rx_dma_faults"},
}

// parseSnapshot decodes one snapshot (what is from, for errors) and checks
// that it has every field the soak needs.
func parseSnapshot(b []byte, what string) (*snapshot, error) {
	if i := bytes.IndexByte(b, '{'); i > 0 {
		b = b[i:] // anything zcnet printed before the JSON
	}
	var raw struct {
		NICs    []map[string]json.RawMessage `json:"nics"`
		Ports   []map[string]json.RawMessage `json:"ports"`
		Traffic map[string]json.RawMessage   `json:"traffic"`
	}
	if err := json.Unmarshal(b, &raw); err != nil {
		return nil, fmt.Errorf("%s is not a snapshot (%v): %.300s", what, err, b)
	}
	if len(raw.NICs) != 1 || len(raw.Ports) != 1 || raw.Traffic == nil {
		return nil, fmt.Errorf("%s: want one NIC, one port and the simulated wire's traffic, got %d, %d, %v: %.300s",
			what, len(raw.NICs), len(raw.Ports), raw.Traffic != nil, b)
	}
	objects := map[string]map[string]json.RawMessage{"nics[0]": raw.NICs[0], "ports[0]": raw.Ports[0], "traffic": raw.Traffic}
	var missing []string
	for obj, keys := range requiredFields {
		for _, k := range keys {
			if _, ok := objects[obj][k]; !ok {
				missing = append(missing, obj+"."+k)
			}
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("%s lacks %s: a count the soak cannot account without", what, strings.Join(missing, ", "))
	}
	var s snapshot
	if err := json.Unmarshal(b, &s); err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return &s, nil
}

// --- zcnet's stderr: logs and goroutine dumps --------------------------------

// stderrWatch reads a zcnet process's stderr: its log lines (the last
// ones kept for failure reports) and the runtime's schedtrace dumps, whose
// goroutine lines it counts.
type stderrWatch struct {
	done chan struct{} // closed at EOF

	mu    sync.Mutex
	logs  []string // last logKeep log lines
	dumps []goroutineDump
	cur   *goroutineDump // the dump being read
	fatal []string       // runtime crash lines ("fatal error", "panic:", "SIGBUS")
}

// goroutineDump is the number of live goroutines (the runtime's own
// included) in one schedtrace dump.
type goroutineDump struct {
	at         time.Time // when its header line arrived
	goroutines int
}

const logKeep = 200

var (
	// "  G17: status=4(select) m=nil lockedm=nil"
	goroutineLine = regexp.MustCompile(`^\s+G\d+: status=(\d+)`)
	// "  P0: ..." and "  M3: ..." lines of a dump.
	schedLine = regexp.MustCompile(`^\s+[PM]\d+: `)
)

// Goroutine states (runtime/runtime2.go) that are not live goroutines:
// _Gdead (a free g kept for reuse) and _Gdeadextra (one kept for cgo
// callbacks). Dumps print the status with the _Gscan bit (0x1000) at times.
const (
	gDead      = 6
	gDeadExtra = 11
	gScanBit   = 0x1000
)

func newStderrWatch(r io.Reader) *stderrWatch {
	w := &stderrWatch{done: make(chan struct{})}
	go w.read(r)
	return w
}

func (w *stderrWatch) read(r io.Reader) {
	defer close(w.done)
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		w.line(sc.Text(), time.Now())
	}
	w.mu.Lock()
	w.finishDump()
	w.mu.Unlock()
}

func (w *stderrWatch) line(l string, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case strings.HasPrefix(l, "SCHED "):
		w.finishDump()
		w.cur = &goroutineDump{at: now}
	case goroutineLine.MatchString(l):
		st, _ := strconv.Atoi(goroutineLine.FindStringSubmatch(l)[1])
		if st &^= gScanBit; w.cur != nil && st != gDead && st != gDeadExtra {
			w.cur.goroutines++
		}
	case schedLine.MatchString(l):
	default:
		if strings.Contains(l, "fatal error") || strings.HasPrefix(l, "panic:") || strings.Contains(l, "SIGBUS") {
			w.fatal = append(w.fatal, l)
		}
		w.logs = append(w.logs, l)
		if len(w.logs) > logKeep {
			w.logs = w.logs[len(w.logs)-logKeep:]
		}
	}
}

// finishDump records the dump being read (mu held). A dump ends where the
// next begins: the runtime prints no end marker.
func (w *stderrWatch) finishDump() {
	if w.cur != nil && w.cur.goroutines > 0 {
		w.dumps = append(w.dumps, *w.cur)
	}
	w.cur = nil
}

// dumpsSince returns the goroutine counts of the dumps that began at or
// after t and are complete.
func (w *stderrWatch) dumpsSince(t time.Time) []int {
	w.mu.Lock()
	defer w.mu.Unlock()
	var n []int
	for _, d := range w.dumps {
		if !d.at.Before(t) {
			n = append(n, d.goroutines)
		}
	}
	return n
}

// tail returns the last n log lines and any crash lines.
func (w *stderrWatch) tail(n int) string {
	w.mu.Lock()
	defer w.mu.Unlock()
	s := lib.Tail(strings.Join(w.logs, "\n"), n)
	if len(w.fatal) > 0 {
		s += "\ncrash lines:\n" + strings.Join(w.fatal, "\n")
	}
	return s
}

// crashLines returns the runtime crash lines seen so far.
func (w *stderrWatch) crashLines() []string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return slices.Clone(w.fatal)
}

// --- process figures from /proc ----------------------------------------------

// procFigures are the leak-prone resources of one process.
type procFigures struct {
	FDs        int
	Threads    int
	Goroutines int    // -1: not known
	RSSKiB     uint64 // VmRSS: anonymous + file + shared memory pages
	AnonKiB    uint64 // RssAnon: the Go heap, stacks, and anything else private
	ShmemKiB   uint64 // RssShmem: mapped tmpfs memfds (guest memory)
	GuestMaps  int    // mappings of guest memory (memfd "zcnet-guest")
}

// readProc reads pid's descriptors, threads, resident memory and guest
// memory mappings ("self" for this process).
func readProc(pid string) (procFigures, error) {
	f := procFigures{Goroutines: -1}
	ents, err := os.ReadDir("/proc/" + pid + "/fd")
	if err != nil {
		return f, err
	}
	f.FDs = len(ents)
	status, err := os.ReadFile("/proc/" + pid + "/status")
	if err != nil {
		return f, err
	}
	for _, l := range strings.Split(string(status), "\n") {
		k, v, ok := strings.Cut(l, ":")
		if !ok {
			continue
		}
		n, _ := strconv.ParseUint(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "Threads":
			f.Threads = int(n)
		case "VmRSS":
			f.RSSKiB = n
		case "RssAnon":
			f.AnonKiB = n
		case "RssShmem":
			f.ShmemKiB = n
		}
	}
	maps, err := os.ReadFile("/proc/" + pid + "/maps")
	if err != nil {
		return f, err
	}
	f.GuestMaps = strings.Count(string(maps), "memfd:zcnet-guest")
	return f, nil
}
