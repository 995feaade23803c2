package dpdk_test

import (
	"context"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"runtime/metrics"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// benchTime is how long each benchmark lets traffic flow.
const benchTime = 3 * time.Second

var (
	benchRounds = flag.Int("vhost.rounds", 3,
		"BenchmarkVirtioUser: alternating zcnet/net_vhost rounds per mode; the figures reported are medians")
	benchProfile = flag.String("vhost.cpuprofile", "",
		"BenchmarkVirtioUser: write a CPU profile of this process during each zcnet measurement window to PREFIX-MODE-ROUND.prof")
)

// A benchMode is what the guest (testpmd with virtio-user) does, and what
// the back end does in return.
type benchMode struct {
	name string
	// guest is testpmd's forwarding mode and extra arguments.
	guest []string
	// vhostFwd is net_vhost's testpmd forwarding mode for this guest mode.
	vhostFwd string
	// zcnetTask builds zcnet's poller for this guest mode.
	zcnetTask func(d *vhost.Device) pollmode.Task
	// rate picks the counter that measures the mode from the guest's
	// point of view.
	rate func(fwdStats) uint64
}

var benchModes = []benchMode{
	// The guest sends, the back end receives and discards.
	{name: "txonly", guest: []string{"--forward-mode=txonly"}, vhostFwd: "rxonly",
		zcnetTask: func(d *vhost.Device) pollmode.Task { return &sink{d: d} },
		rate:      func(s fwdStats) uint64 { return s.TxPackets }},
	// The back end sends, the guest receives and discards.
	{name: "rxonly", guest: []string{"--forward-mode=rxonly"}, vhostFwd: "txonly",
		zcnetTask: newSource,
		rate:      func(s fwdStats) uint64 { return s.RxPackets }},
	// Frames circulate: the guest forwards what the back end returns.
	{name: "io", guest: []string{"--forward-mode=io", "--tx-first"}, vhostFwd: "macswap",
		zcnetTask: func(d *vhost.Device) pollmode.Task { return vhosttest.NewLoopback(d) },
		rate:      func(s fwdStats) uint64 { return s.RxPackets }},
}

// benchFeatures is what zcnet's back end offers in the benchmark: the
// default set plus IN_ORDER, which net_vhost offers too. The guest's
// virtio PMD asks for IN_ORDER by default and picks its cheaper in-order
// RX and TX paths when it gets it, so offering the same features keeps
// the guest's own cost equal on both sides. The three benchmark tasks
// complete every queue in the order they pop it, as IN_ORDER requires.
// (Either way the guest negotiates VERSION_1, MRG_RXBUF, STATUS and
// INDIRECT_DESC; the virtio PMD asks for nothing else that either side
// offers.)
const benchFeatures = vhost.DefaultFeatures | vhost.FInOrder

// BenchmarkVirtioUser measures the packet rate testpmd's virtio-user
// reaches against zcnet's back end and against DPDK's net_vhost, with
// 64-byte frames on a split ring of 256 entries with mergeable buffers,
// bursts of 32, one queue pair, one polling core on each side: either
// back end polls on host.backendCPU (zcnet's lcore, or net_vhost's
// forwarding lcore), the guest's forwarding lcore on host.frontendCPU.
//
// Run it with -benchtime 1x. Each iteration runs -vhost.rounds rounds;
// a round measures zcnet and net_vhost for benchTime each, alternating
// which goes first so that a change in machine load hits both alike. The
// figures are medians over the rounds: zcnet-Mpps, net_vhost-Mpps and
// their ratio, as testpmd (the guest, the same binary and arguments on
// both sides) counts them. zcnet-busy% is the share of the zcnet lcore's
// polling time spent in rounds that moved frames: well under 100 means
// the guest, not zcnet, limits the rate. zcnet-guest-ns/pkt and
// net_vhost-guest-ns/pkt are the guest testpmd's own time per packet
// against each back end (--record-core-cycles on the guest too).
func BenchmarkVirtioUser(b *testing.B) {
	h := checkHost(b, 2)
	for _, m := range benchModes {
		b.Run(m.name, func(b *testing.B) {
			var zc, vh, ratio, busy, zcNs, vhNs, zcGuest, vhGuest []float64
			for range b.N {
				for r := range *benchRounds {
					var z, v benchResult
					if r%2 == 0 {
						z = benchZcnet(b, h, m, r)
						v = benchNetVhost(b, h, m)
					} else {
						v = benchNetVhost(b, h, m)
						z = benchZcnet(b, h, m, r)
					}
					// Printed, not logged: a benchmark's log is cut at ten
					// lines, and testpmd's command lines come first.
					fmt.Printf("    %s round %d: zcnet %.3f Mpps %.0f ns/pkt %.1f pkts/poll (lcore busy %.0f%%, Go scheduler wait %v, guest %.0f ns/pkt), net_vhost %.3f Mpps %.0f ns/pkt (guest %.0f ns/pkt), ratio %.2f; %s\n",
						m.name, r, z.mpps, z.nsPerPkt, z.perPoll, 100*z.busy, z.schedWait.Round(time.Microsecond), z.guestNs,
						v.mpps, v.nsPerPkt, v.guestNs, z.mpps/v.mpps, loadAverage())
					zc, vh, busy = append(zc, z.mpps), append(vh, v.mpps), append(busy, 100*z.busy)
					zcNs, vhNs = append(zcNs, z.nsPerPkt), append(vhNs, v.nsPerPkt)
					zcGuest, vhGuest = append(zcGuest, z.guestNs), append(vhGuest, v.guestNs)
					ratio = append(ratio, z.mpps/v.mpps)
				}
			}
			b.ReportMetric(median(zc), "zcnet-Mpps")
			b.ReportMetric(median(vh), "net_vhost-Mpps")
			b.ReportMetric(median(ratio), "ratio")
			b.ReportMetric(median(zcNs), "zcnet-ns/pkt")
			b.ReportMetric(median(vhNs), "net_vhost-ns/pkt")
			b.ReportMetric(median(busy), "zcnet-busy%")
			b.ReportMetric(median(zcGuest), "zcnet-guest-ns/pkt")
			b.ReportMetric(median(vhGuest), "net_vhost-guest-ns/pkt")
		})
	}
}

// benchResult is one measurement of a back end.
type benchResult struct {
	mpps float64
	// nsPerPkt is the back end's time per packet in its polls that moved
	// packets: zcnet's lcore busy time over the frames its task handled;
	// net_vhost's busy cycles over packets as testpmd's
	// --record-core-cycles counts them. It depends less than Mpps on how
	// often the scheduler lets each side run, but a preemption in the
	// middle of a busy poll is still charged to it.
	nsPerPkt float64
	// guestNs is the guest's time per packet, as its testpmd's
	// --record-core-cycles counts it: the same driver on both sides, so a
	// difference is what the back end costs the guest (the cache lines
	// it leaves the guest to fetch back).
	guestNs float64
	busy    float64 // zcnet: lcore busy fraction, 0..1
	// perPoll is zcnet's frames per poll that moved any: the burst the
	// guest's pace leaves it, over which each poll's fixed cost is spread.
	perPoll float64
	// schedWait is how long the process's goroutines waited to be run by
	// the Go scheduler during the measurement (see schedWait).
	schedWait time.Duration
}

func median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

// loadAverage is /proc/loadavg's first three fields, to log with each
// round: the machine may be shared.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "load unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "load unknown"
	}
	return "load " + strings.Join(f[:3], " ")
}

func mpps(pkts uint64) float64 { return float64(pkts) / benchTime.Seconds() / 1e6 }

func benchGuest(b *testing.B, h host, m benchMode, sock string) *testpmd {
	sc := scenario{name: "bench-" + m.name, devargs: "mrg_rxbuf=1"}
	app := append([]string{"--port-topology=loop", "--nb-cores=1", "--txpkts=64", "--record-core-cycles",
		fmt.Sprintf("--total-num-mbufs=%d", mbufPool)}, m.guest...)
	return startTestpmd(b, h, virtioUserLabel, eal(h.backendCPU, h.frontendCPU, sc.name+"-vu", sc.virtioUserVdev(sock)), app)
}

func benchZcnet(b *testing.B, h host, m benchMode, round int) benchResult {
	d, err := vhost.NewDevice(vhost.Config{Name: "bench", Features: benchFeatures})
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(b.TempDir(), "vhost.sock")
	l, err := vhost.Listen(sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var serving sync.WaitGroup
	defer func() { cancel(); serving.Wait() }()
	serving.Go(func() { _ = vhost.ServeListener(ctx, l, d) })
	runner, err := pollmode.NewRunner(pollmode.RunnerOptions{},
		[]pollmode.LcoreConfig{{ID: 0, CPU: h.backendCPU, Tasks: []pollmode.Task{m.zcnetTask(d)}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := runner.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = runner.Stop() }()
	guest := benchGuest(b, h, m, sock)
	guest.waitForwarding()
	d.LockDataPath()
	features := d.Features()
	d.UnlockDataPath()
	if features&vhost.FInOrder == 0 {
		b.Fatalf("the guest did not negotiate IN_ORDER (features %#x): the comparison with net_vhost would not be like for like", features)
	}
	stopProfile := startProfile(b, m, round)
	before, waitBefore := runner.Stats()[0], schedWait()
	time.Sleep(benchTime)
	after, waitAfter := runner.Stats()[0], schedWait()
	stopProfile()
	busy := after.BusyTime - before.BusyTime
	idle := after.IdleTime - before.IdleTime
	task := after.Tasks[0].BusyTime - before.Tasks[0].BusyTime
	work := after.Tasks[0].Work - before.Tasks[0].Work
	polls := after.Tasks[0].BusyPolls - before.Tasks[0].BusyPolls
	gs := guest.stop()
	return benchResult{mpps: mpps(m.rate(gs)), guestNs: guestNsPerPkt(b, guest), busy: float64(busy) / float64(busy+idle),
		nsPerPkt: float64(task) / float64(max(work, 1)), perPoll: float64(work) / float64(max(polls, 1)),
		schedWait: waitAfter - waitBefore}
}

// schedWait estimates the total time this process's goroutines have spent
// runnable but not running (runtime/metrics /sched/latencies, each event
// counted at its bucket's lower bound). While the benchmark sleeps, nearly
// all of it is the lcore's: the Go scheduler preempts a goroutine that has
// run for 10 ms, and a goroutine locked to its thread, as an lcore is, then
// resumes only after two thread hand-offs, during which it does not poll.
func schedWait() time.Duration {
	sample := []metrics.Sample{{Name: "/sched/latencies:seconds"}}
	metrics.Read(sample)
	if sample[0].Value.Kind() != metrics.KindFloat64Histogram {
		return 0
	}
	h := sample[0].Value.Float64Histogram()
	var total float64
	for i, n := range h.Counts {
		if lo := h.Buckets[i]; n > 0 && lo > 0 {
			total += float64(n) * lo
		}
	}
	return time.Duration(total * 1e9)
}

// startProfile starts a CPU profile of the measurement window if
// -vhost.cpuprofile asks for one and returns what stops it.
func startProfile(b *testing.B, m benchMode, round int) func() {
	if *benchProfile == "" {
		return func() {}
	}
	f, err := os.Create(fmt.Sprintf("%s-%s-%d.prof", *benchProfile, m.name, round))
	if err != nil {
		b.Fatalf("-vhost.cpuprofile: %v", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		b.Fatalf("-vhost.cpuprofile: %v (do not combine it with -cpuprofile)", err)
	}
	return func() {
		pprof.StopCPUProfile()
		if err := f.Close(); err != nil {
			b.Errorf("-vhost.cpuprofile: %v", err)
		}
	}
}

func benchNetVhost(b *testing.B, h host, m benchMode) benchResult {
	sock := filepath.Join(b.TempDir(), "vhost.sock")
	backend := startTestpmd(b, h, "net_vhost",
		eal(h.frontendCPU, h.backendCPU, "bench-"+m.name+"-vh", fmt.Sprintf("net_vhost0,iface=%s,queues=1", sock)),
		[]string{"-i", "--auto-start", "--record-core-cycles", "--forward-mode=" + m.vhostFwd, "--port-topology=loop", "--nb-cores=1",
			"--txpkts=64", fmt.Sprintf("--total-num-mbufs=%d", mbufPool)})
	backend.waitForwarding()
	guest := benchGuest(b, h, m, sock)
	guest.waitForwarding()
	time.Sleep(benchTime)
	s := guest.stop()
	guestNs := guestNsPerPkt(b, guest)
	backend.stopForwarding()
	backend.quit()
	ns, err := parseCyclesPerPacket(backend.out.String())
	if err != nil {
		b.Fatalf("net_vhost: %v", err)
	}
	return benchResult{mpps: mpps(m.rate(s)), nsPerPkt: ns, guestNs: guestNs}
}

// guestNsPerPkt is the stopped guest testpmd's time per packet.
func guestNsPerPkt(b *testing.B, guest *testpmd) float64 {
	ns, err := parseCyclesPerPacket(guest.out.String())
	if err != nil {
		b.Fatalf("guest: %v", err)
	}
	return ns
}

var cyclesLine = regexp.MustCompile(`CPU cycles/packet=([0-9.]+) .* at ([0-9]+) MHz Clock`)

// parseCyclesPerPacket reads the line testpmd's --record-core-cycles adds
// to the statistics printed when forwarding stops, in ns per packet. Its
// txonly engine (net_vhost's side of the rxonly mode) counts the cycles of
// bursts that sent nothing too, which overstates its cost there.
func parseCyclesPerPacket(out string) (float64, error) {
	m := cyclesLine.FindStringSubmatch(out)
	if m == nil {
		return 0, fmt.Errorf("no \"CPU cycles/packet=... MHz Clock\" line in testpmd's output (--record-core-cycles)")
	}
	cycles, err := strconv.ParseFloat(m[1], 64)
	if err != nil {
		return 0, fmt.Errorf("cycles/packet %q: %w", m[1], err)
	}
	mhz, err := strconv.ParseFloat(m[2], 64)
	if err != nil || mhz == 0 {
		return 0, fmt.Errorf("TSC clock %q MHz: %v", m[2], err)
	}
	return cycles / mhz * 1e3, nil
}

// sink is a back end that takes every frame the guest transmits and drops
// it: the device side of a txonly guest.
type sink struct {
	d      *vhost.Device
	c      vhost.Chain
	direct [defaultBurst]vhost.DirectBuf
}

func (s *sink) Name() string { return "sink" }

func (s *sink) Poll() int {
	if s.c.Segs == nil {
		s.c.Segs = make([]vhost.Segment, 0, 64)
	}
	s.d.LockDataPath()
	defer s.d.UnlockDataPath()
	q := s.d.TxQueue(0)
	if q == nil {
		return 0
	}
	// Frames in one descriptor a burst at a time, the rest one by one.
	n := q.PopDirect(s.direct[:], false)
	for i := range s.direct[:n] {
		q.Push(s.direct[i].Head, 0)
	}
	for ; n < defaultBurst; n++ {
		if ok, _ := q.Pop(&s.c); !ok {
			break
		}
		q.Push(s.c.Head, 0)
	}
	q.Flush()
	return n
}

// source is a back end that fills every RX buffer the guest posts with a
// 64-byte frame: the device side of an rxonly guest.
type source struct {
	d     *vhost.Device
	c     vhost.Chain
	frame []byte // virtio-net header (num_buffers 1) + Ethernet frame
	// fills are the burst's buffers, filled after the burst is popped
	// (see Poll).
	fills  [defaultBurst][]byte
	direct [defaultBurst]vhost.DirectBuf
}

func newSource(d *vhost.Device) pollmode.Task {
	f := make([]byte, netHeaderLen+64)
	binary.LittleEndian.PutUint16(f[10:], 1) // num_buffers
	eth := f[netHeaderLen:]
	copy(eth, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5}) // local experimental EtherType
	return &source{d: d, c: vhost.Chain{Segs: make([]vhost.Segment, 0, 64)}, frame: f}
}

func (s *source) Name() string { return "source" }

// fill writes the frame into buf, its header only where buf does not
// already hold it: the guest reads each header it receives, and DPDK's
// vhost leaves unchanged header fields unwritten so that the line stays
// shared (see the loopback's setHeader in package vhosttest).
func (s *source) fill(buf []byte) int {
	// The header as two words (see the loopback's setHeader), read first:
	// the load can start while the frame's stores wait for their line.
	lo, hi := binary.LittleEndian.Uint64(s.frame), binary.LittleEndian.Uint32(s.frame[8:])
	if binary.LittleEndian.Uint64(buf) != lo || binary.LittleEndian.Uint32(buf[8:]) != hi {
		binary.LittleEndian.PutUint64(buf, lo)
		binary.LittleEndian.PutUint32(buf[8:], hi)
	}
	copy(buf[netHeaderLen:len(s.frame)], s.frame[netHeaderLen:])
	return len(s.frame)
}

func (s *source) Poll() int {
	s.d.LockDataPath()
	defer s.d.UnlockDataPath()
	q := s.d.RxQueue(0)
	if q == nil {
		return 0
	}
	// The frames are written after the whole burst is popped, in one
	// loop, as DPDK's vhost batches small copies: each buffer's lines were
	// last read by the guest's core, and storing into them interleaved
	// with popping made every pop wait for the previous frame's lines;
	// together the CPU fetches them at once. The used entries are
	// published only at Flush, after the writes.
	// Buffers of one descriptor a burst at a time, the rest one by one.
	n, fills := q.PopDirect(s.direct[:], true), 0
	for i := range s.direct[:n] {
		d := &s.direct[i]
		written := len(s.frame)
		if len(d.Buf) >= written {
			s.fills[fills] = d.Buf
			fills++
		} else {
			written = copy(d.Buf, s.frame)
		}
		q.Push(d.Head, uint32(written))
	}
	for ; n < defaultBurst; n++ {
		ok, err := q.Pop(&s.c)
		if !ok {
			break
		}
		written := 0
		if err == nil {
			segs := s.c.Segs
			for len(segs) > 0 && !segs[0].Writable {
				segs = segs[1:]
			}
			if len(segs) > 0 && len(segs[0].Buf) >= len(s.frame) {
				s.fills[fills] = segs[0].Buf
				fills++
				written = len(s.frame)
			} else {
				written = vhost.Scatter(segs, 0, s.frame)
			}
		}
		q.Push(s.c.Head, uint32(written))
	}
	// (s.fills keeps the slices until the next burst overwrites them:
	// clearing each would queue three more stores behind the frame's,
	// which wait for their lines.)
	for i := range s.fills[:fills] {
		s.fill(s.fills[i])
	}
	q.Flush()
	return n
}
