package main

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
)

// benchOptions are the flags of `zcnet bench`.
type benchOptions struct {
	lcores   string
	sizes    []int
	modes    []string
	duration time.Duration
	warmup   time.Duration
	rate     string // a frame rate, or "auto"
	ramp     rampOptions
	flows    int
	rxd, txd int
	ghz      float64
	json     bool
	guests   int

	pageSize hugepage.PageSize // tests: 4 KiB pages instead of hugepages
}

// Benchmark modes: how the engine moves frames.
const (
	modeZeroCopy = "zero-copy"
	modeCopy     = "copy"
)

// lineRate64 is 10 GbE line rate for 64-byte frames: 10^10 bit/s over
// (64 + 8 preamble + 12 inter-frame gap) bytes = 14.88 Mpps, 67.2 ns each.
const lineRate64 = 1e10 / ((64 + 20) * 8)

func newBenchCommand(a *app) *cobra.Command {
	o := &benchOptions{}
	cmd := &cobra.Command{
		Use:   "bench",
		Short: "Measure the data path's per-packet cost, rate and latency on the simulator",
		Long: `bench runs phy -> guest -> phy on the simulated 82599: the traffic
generator sends into the simulated port, the engine on a pinned lcore moves
each frame into the built-in guest, which echoes it (MACs swapped), and the
engine moves it back to the wire and the verifying sink. It does so for
every frame size and mode (zero-copy, and copy forced) and reports for each:

  Mpps         frames back at the sink per second of sending
  ns/pkt       PMD cost: the poll lcore's busy time (the lcore runner's
               per-task clock, read only around polls that moved packets)
               divided by the frames it moved, counting both directions:
               an echoed frame is moved twice (wire->guest, guest->wire).
               The simulator, generator, sink and guest run on other
               threads and are not counted.
  ns/fwd       the same per echoed frame (both moves): 10 GbE line rate at
               64 bytes on one core needs <= 67.2 ns
  cyc/pkt      ns/pkt x the CPU clock (the method is printed)
  pkts/poll    frames per busy poll: small bursts cost more per frame
  lat p50/p99  round trip from the generator's stamp to the sink
  lost, faults sink loss and IOMMU faults

--guests N puts N built-in guests with their own MACs on the one simulated
port (pools of the 82599, one lcore serving them all); the generator
addresses them in turn, and the rate is through all of them together.

With --rate auto (the default) each configuration first ramps the generator
(doubling, then bisecting) to the highest rate it forwards without loss in
--trial-long runs, then measures at that rate for --duration.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runBench(ctx, a.log, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.lcores, "lcores", "l", "", "poll core, DPDK -l syntax; default: the last allowed CPU")
	f.IntSliceVar(&o.sizes, "sizes", []int{64, 512, 1500}, "frame sizes on the wire, FCS included (64 to 1518)")
	f.StringSliceVar(&o.modes, "modes", []string{modeZeroCopy, modeCopy}, "modes to run: zero-copy, copy (forced)")
	f.DurationVar(&o.duration, "duration", 3*time.Second, "measurement per configuration")
	f.DurationVar(&o.warmup, "warmup", 300*time.Millisecond, "unmeasured traffic before a fixed-rate measurement")
	f.StringVar(&o.rate, "rate", "auto", `generator rate in frames per second, or "auto": the highest loss-free rate found by ramping`)
	o.ramp.addFlags(f)
	f.IntVar(&o.flows, "flows", 1, "number of UDP flows the generator cycles through")
	f.IntVar(&o.rxd, "rxd", 2048, "NIC RX descriptors")
	f.IntVar(&o.txd, "txd", 2048, "NIC TX descriptors")
	f.Float64Var(&o.ghz, "ghz", 0, "CPU clock for cycles/packet (0: read it from the system)")
	f.BoolVar(&o.json, "json", false, "print the report as JSON on stdout (progress goes to stderr)")
	f.IntVar(&o.guests, "guests", 1, "built-in guests on the simulated port (1 to 64), each with its own MAC, the generator addressing them in turn")
	return cmd
}

// rampOptions are the flags of the rate ramp that zcnet bench and zcnet
// sim --rate auto share.
type rampOptions struct {
	startRate, maxRate float64
	trial              time.Duration
}

// addFlags defines --start-rate, --max-rate and --trial, with the same
// defaults for both commands: on the 2-CPU machine the ramp takes about
// ten trials, some 6 s.
func (p *rampOptions) addFlags(f *pflag.FlagSet) {
	f.Float64Var(&p.startRate, "start-rate", 25000, "auto: first rate tried")
	f.Float64Var(&p.maxRate, "max-rate", 20e6, "auto: highest rate tried")
	f.DurationVar(&p.trial, "trial", 500*time.Millisecond, "auto: length of each ramp trial")
}

func (p *rampOptions) check() error {
	switch {
	case p.trial <= 0:
		return fmt.Errorf("--trial %s must be positive", p.trial)
	case p.startRate <= 0 || p.maxRate < p.startRate:
		return fmt.Errorf("--start-rate %g and --max-rate %g: give 0 < start <= max", p.startRate, p.maxRate)
	}
	return nil
}

// parseRate reads a --rate value: a positive frame rate, or 0 for "auto".
func parseRate(s string) (float64, error) {
	if s == "auto" {
		return 0, nil
	}
	r, err := strconv.ParseFloat(s, 64)
	if err != nil || r <= 0 {
		return 0, fmt.Errorf(`--rate %q: give a positive frame rate or "auto"`, s)
	}
	return r, nil
}

func (o *benchOptions) check() error {
	if _, err := parseRate(o.rate); err != nil {
		return err
	}
	if err := o.ramp.check(); err != nil {
		return err
	}
	if len(o.sizes) == 0 || len(o.modes) == 0 {
		return errors.New("--sizes and --modes must each name at least one value")
	}
	for _, s := range o.sizes {
		if s < wire.MinFrameSize || s > 1518 {
			return fmt.Errorf("--sizes: %d: use %d to 1518", s, wire.MinFrameSize)
		}
	}
	for _, m := range o.modes {
		if m != modeZeroCopy && m != modeCopy {
			return fmt.Errorf("--modes: %q: use %s or %s", m, modeZeroCopy, modeCopy)
		}
	}
	switch {
	case o.duration <= 0 || o.warmup < 0:
		return errors.New("--duration must be positive, --warmup not negative")
	case o.flows < 1 || o.flows > 65536:
		return fmt.Errorf("--flows %d: use 1 to 65536", o.flows)
	case o.ghz < 0:
		return fmt.Errorf("--ghz %g must not be negative", o.ghz)
	case o.guests < 1 || o.guests > maxSimGuests:
		return fmt.Errorf("--guests %d: use 1 to %d", o.guests, maxSimGuests)
	}
	return nil
}

// benchReport is what `zcnet bench --json` prints.
type benchReport struct {
	Setup   string    `json:"setup"`
	Counted string    `json:"pmd_packets_counted"`
	Clock   cpuClock  `json:"clock"`
	CPUs    int       `json:"cpus"`
	Go      string    `json:"go"`
	LoadAvg [2]string `json:"loadavg_before_after"`
	// TargetNsPerFwd is the per-echoed-frame budget for one 10 GbE port
	// at line rate (64-byte frames) on one core.
	TargetNsPerFwd float64 `json:"target_ns_per_forwarded_frame"`
	// Guests is --guests when more than one guest shares the port.
	Guests int           `json:"guests,omitempty"`
	Rows   []benchResult `json:"rows"`
}

// benchResult is one configuration's measurement.
type benchResult struct {
	Mode      string `json:"mode"`
	FrameSize int    `json:"frame_size"`
	Lcore     int    `json:"lcore"`
	CPU       int    `json:"cpu"`
	// RateOffered is the generator's rate; AutoRate says the ramp chose it.
	RateOffered float64 `json:"offered_pps"`
	AutoRate    bool    `json:"auto_rate"`
	Seconds     float64 `json:"seconds"`

	Sent     uint64  `json:"sent"`
	Received uint64  `json:"received"`
	Lost     uint64  `json:"lost"`
	Mpps     float64 `json:"mpps"`
	GbpsL1   float64 `json:"gbps_l1"` // with preamble and inter-frame gap

	PMDPackets      uint64  `json:"pmd_packets"` // both directions
	PMDBusySeconds  float64 `json:"pmd_busy_seconds"`
	PMDBusyPolls    uint64  `json:"pmd_busy_polls"`
	NsPerPacket     float64 `json:"pmd_ns_per_packet"`
	CyclesPerPacket float64 `json:"pmd_cycles_per_packet"`
	NsPerForwarded  float64 `json:"pmd_ns_per_forwarded_frame"`
	PacketsPerPoll  float64 `json:"packets_per_busy_poll"`
	LcoreBusyPct    float64 `json:"lcore_busy_percent"`
	// PreemptedPct is the share of the measurement the lcore's thread
	// was runnable but not running (its schedstat run-queue wait): other
	// threads on its CPU. Busy time is wall time, so preemption inside a
	// busy poll inflates ns/pkt; NsPerPacketOnCPU removes it on the
	// assumption that preemption hits busy and idle polls alike. Both
	// are -1 when the lcore's thread could not be found.
	PreemptedPct     float64 `json:"lcore_preempted_percent"`
	NsPerPacketOnCPU float64 `json:"pmd_ns_per_packet_on_cpu_estimate"`

	ZeroCopy uint64 `json:"zero_copy_frames"`
	Copied   uint64 `json:"copied_frames"`

	LatencyP50Us float64 `json:"latency_p50_us"`
	LatencyP99Us float64 `json:"latency_p99_us"`

	NICMissed   uint64 `json:"nic_missed"`
	NICNoDesc   uint64 `json:"nic_no_descriptor"`
	EngineDrops uint64 `json:"engine_drops"`
	IOMMUFaults uint64 `json:"iommu_faults"`
	// Misdelivered: frames a guest received for another guest's MAC
	// (with several guests; must be 0).
	Misdelivered uint64 `json:"misdelivered,omitempty"`
}

func runBench(ctx context.Context, log *zap.Logger, o *benchOptions, out, errOut io.Writer) error {
	if err := o.check(); err != nil {
		return err
	}
	cpus, err := pollmode.PollCPUs(o.lcores)
	if err != nil {
		return err
	}
	if len(cpus) != 1 {
		return fmt.Errorf("-l %s gives %d lcores: the benchmark has one channel, give one core", o.lcores, len(cpus))
	}
	clock := cpuClock{GHz: o.ghz, Method: "given with --ghz"}
	if o.ghz == 0 {
		clock = detectClock(cpus[0])
	}
	rep := benchReport{
		Setup: "phy -> guest -> phy on the simulated 82599: generator -> NIC -> engine -> vhost-user -> built-in echo guest (macswap) -> engine -> NIC -> sink",
		Counted: "frames the poll lcore moved in both directions (wire->guest plus guest->wire: an echoed frame counts twice); " +
			"busy time from the lcore runner's per-task clock, read only around polls that moved packets",
		Clock: clock, CPUs: runtime.NumCPU(), Go: runtime.Version(),
		TargetNsPerFwd: 1e9 / lineRate64,
	}
	if o.guests > 1 {
		rep.Guests = o.guests
		rep.Setup += fmt.Sprintf("; %d guests on the one port (a pool each, their own MACs, the generator addressing them in turn), served by one lcore", o.guests)
	}
	rep.LoadAvg[0] = loadAvg()
	for _, mode := range o.modes {
		for _, size := range o.sizes {
			if ctx.Err() != nil {
				break
			}
			res, err := benchCase(ctx, log, o, mode == modeCopy, size, errOut)
			if err != nil {
				return fmt.Errorf("%s, %d-byte frames: %w", mode, size, err)
			}
			res.CyclesPerPacket = res.NsPerPacket * clock.GHz
			rep.Rows = append(rep.Rows, res)
		}
	}
	rep.LoadAvg[1] = loadAvg()
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(&rep); err != nil {
			return err
		}
	} else {
		printBench(out, &rep)
	}
	for _, r := range rep.Rows {
		if r.IOMMUFaults != 0 {
			return fmt.Errorf("%s, %d-byte frames: the simulated NIC counted %d IOMMU faults: DMA outside the mapped memory", r.Mode, r.FrameSize, r.IOMMUFaults)
		}
		if r.Misdelivered != 0 {
			return fmt.Errorf("%s, %d-byte frames: %d frames reached a guest they were not addressed to (misdelivered)", r.Mode, r.FrameSize, r.Misdelivered)
		}
	}
	return ctx.Err()
}

// benchRun is the appliance of one configuration, between trials (of
// zcnet bench, or of the ramp of zcnet sim --rate auto).
type benchRun struct {
	*rig.Rig
	frameSize int
	progress  io.Writer
	label     string
	trials    int     // how many trials search ran
	best      float64 // the highest rate a trial of search forwarded without loss
}

// benchCase has the rig assemble a fresh appliance for one configuration,
// finds or takes the rate, measures, and shuts the appliance down.
func benchCase(ctx context.Context, log *zap.Logger, o *benchOptions, copyPath bool, size int, progress io.Writer) (benchResult, error) {
	mode := modeZeroCopy
	if copyPath {
		mode = modeCopy
	}
	dir, err := os.MkdirTemp("", "zcnet-bench-")
	if err != nil {
		return benchResult{}, err
	}
	defer os.RemoveAll(dir)
	nic := appliance.NICSpec{PCI: "sim:" + sim.DefaultOptions().Address, Rxd: o.rxd, Txd: o.txd, Copy: copyPath,
		Guests: []appliance.GuestSpec{{Socket: filepath.Join(dir, "guest.sock")}}}
	if o.guests > 1 {
		nic.MaxGuests, nic.Guests = o.guests, simGuests(dir, o.guests)
	}
	r, err := rig.Open(rig.Config{
		Spec:      appliance.Spec{Lcores: o.lcores, NICs: []appliance.NICSpec{nic}, PageSize: o.pageSize},
		Options:   []appliance.Option{appliance.WithLogger(log)},
		Generator: &wire.GeneratorConfig{FrameSize: size, Flows: o.flows},
		Guest:     true,
	})
	if err != nil {
		return benchResult{}, err
	}
	defer r.Close()
	if err := r.Run(ctx); err != nil {
		return benchResult{}, err
	}

	b := &benchRun{Rig: r, frameSize: size, progress: progress, label: fmt.Sprintf("%s %dB", mode, size)}
	rate, err := parseRate(o.rate)
	if err != nil {
		return benchResult{}, err
	}
	auto := rate == 0
	if auto {
		rate = b.search(ctx, o.ramp)
	} else if o.warmup > 0 {
		b.trial(ctx, rate, o.warmup)
	}
	res := b.trial(ctx, rate, o.duration)
	res.Mode, res.AutoRate = mode, auto
	fmt.Fprintf(progress, "%s: measured %.0f pps for %.1fs: %.3f Mpps, %.1f ns/pkt, lost %d\n",
		b.label, rate, res.Seconds, res.Mpps, res.NsPerPacket, res.Lost)

	// Faults are read after shutdown: an unmap under a live DMA would
	// show up only then. The guest stays connected until the data path
	// has stopped (as in zcnet sim); the deferred close disconnects it.
	if err := r.Shutdown(); err != nil {
		return res, err
	}
	res.IOMMUFaults = r.Port.PF.Counters().IOMMUFaults
	for _, g := range r.GuestTraffic() {
		res.Misdelivered += g.Misdelivered
	}
	return res, nil
}

// search ramps the rate from --start-rate, doubling while a trial loses
// nothing, then bisects between the last loss-free and the first lossy
// rate to within 5%. It returns the highest loss-free rate seen (or, if even
// the lowest rate tried lost frames, that rate).
func (b *benchRun) search(ctx context.Context, o rampOptions) float64 {
	lossFree := func(rate float64) bool {
		t := b.trial(ctx, rate, o.trial)
		b.trials++
		ok := t.Lost == 0 && t.Received > 0
		if ok {
			b.best = max(b.best, rate)
		}
		fmt.Fprintf(b.progress, "%s: trial %.0f pps: %.3f Mpps, lost %d\n", b.label, rate, t.Mpps, t.Lost)
		return ok
	}
	good, bad := 0.0, 0.0
	for rate := o.startRate; ctx.Err() == nil; rate *= 2 {
		if rate > o.maxRate {
			return good
		}
		if !lossFree(rate) {
			bad = rate
			break
		}
		good = rate
	}
	for good == 0 && ctx.Err() == nil { // even the start rate lost frames: go down
		if bad /= 2; bad < 1000 {
			return 1000
		}
		if lossFree(bad) {
			good, bad = bad, 2*bad
		}
	}
	for bad-good > 0.05*good && ctx.Err() == nil {
		mid := (good + bad) / 2
		if lossFree(mid) {
			good = mid
		} else {
			bad = mid
		}
	}
	return good
}

// trial sends at rate for d from a fresh generator into a reset sink,
// waits for the frames in flight, and measures what the lcore and the
// wire saw meanwhile. It does not fill in Mode, AutoRate or IOMMUFaults.
func (b *benchRun) trial(ctx context.Context, rate float64, d time.Duration) benchResult {
	gen, err := b.Regenerate(rate)
	if err != nil { // the configuration was checked: a bug
		panic(err)
	}
	lc := b.App.Lcores()[0]
	tid := lcoreThread(lc.CPU())
	schedBefore, schedOK := threadSchedstat(tid)
	before, snapBefore := lc.Stats(), b.App.Snapshot("bench")
	start := time.Now()
	_ = gen.Start() // a fresh generator: cannot be running
	select {
	case <-ctx.Done():
	case <-time.After(d):
	}
	gen.Stop()
	secs := time.Since(start).Seconds()
	b.Drain()
	after, snapAfter := lc.Stats(), b.App.Snapshot("bench")
	schedAfter, schedAfterOK := threadSchedstat(tid)
	wall := time.Since(start)

	res := benchResult{FrameSize: b.frameSize, Lcore: lc.ID(), CPU: lc.CPU(), RateOffered: rate, Seconds: secs}
	st := b.Port.Sink.Stats()
	res.Sent, res.Received = gen.Sent(), st.Received
	// Only frames with a probe come back to the sink: with zcnet sim
	// --broadcast-every the guests' echoes of broadcasts are dropped by
	// the NIC as spoofed, and are not lost. Without broadcasts Probes is
	// Sent.
	res.Lost = gen.Probes() - min(gen.Probes(), res.Received)
	res.Mpps = float64(res.Received) / secs / 1e6
	res.GbpsL1 = res.Mpps * 1e6 * float64(b.frameSize+20) * 8 / 1e9
	res.LatencyP50Us = float64(st.Latency.P50) / 1e3
	res.LatencyP99Us = float64(st.Latency.P99) / 1e3

	// Frames moved are the ports' delivered counts (what a poll returns
	// is work done, which on the copy path need not be one per frame).
	tb, ta := snapBefore.Totals(), snapAfter.Totals()
	res.PMDPackets = (ta.GuestRx - tb.GuestRx) + (ta.GuestTx - tb.GuestTx)
	busyBefore, pollsBefore := taskBusy(before)
	busy, polls := taskBusy(after)
	busy -= busyBefore
	res.PMDBusyPolls = polls - pollsBefore
	res.PMDBusySeconds = busy.Seconds()
	if res.PMDPackets > 0 {
		res.NsPerPacket = float64(busy.Nanoseconds()) / float64(res.PMDPackets)
		res.NsPerForwarded = 2 * res.NsPerPacket
		res.PacketsPerPoll = float64(res.PMDPackets) / float64(res.PMDBusyPolls)
	}
	res.PreemptedPct, res.NsPerPacketOnCPU = -1, -1
	if schedOK && schedAfterOK && wall > 0 {
		run, wait := schedAfter.run-schedBefore.run, schedAfter.wait-schedBefore.wait
		res.PreemptedPct = 100 * float64(wait) / float64(wall)
		if run+wait > 0 {
			res.NsPerPacketOnCPU = res.NsPerPacket * float64(run) / float64(run+wait)
		}
	}
	if total := (after.BusyTime - before.BusyTime) + (after.IdleTime - before.IdleTime); total > 0 {
		res.LcoreBusyPct = 100 * float64(after.BusyTime-before.BusyTime) / float64(total)
	}
	res.ZeroCopy, res.Copied = ta.ZeroCopy-tb.ZeroCopy, ta.Copied-tb.Copied
	res.NICMissed, res.NICNoDesc = ta.NICMissed-tb.NICMissed, ta.NICNoDescriptor-tb.NICNoDescriptor
	res.EngineDrops = ta.Drops - tb.Drops
	return res
}

// taskBusy is an lcore's PMD clock: its tasks' time in polls that moved
// frames, and how many such polls.
func taskBusy(st pollmode.LcoreStats) (busy time.Duration, polls uint64) {
	for _, t := range st.Tasks {
		busy += t.BusyTime
		polls += t.BusyPolls
	}
	return busy, polls
}

// printBench prints the report as a table with its method notes.
func printBench(out io.Writer, rep *benchReport) {
	fmt.Fprintf(out, "zcnet bench: %s\n", rep.Setup)
	fmt.Fprintf(out, "PMD packets: %s\n", rep.Counted)
	fmt.Fprintf(out, "cycles at %.3f GHz: %s\n", rep.Clock.GHz, rep.Clock.Method)
	fmt.Fprintf(out, "%d CPUs, %s; load average before: %s, after: %s\n", rep.CPUs, rep.Go, rep.LoadAvg[0], rep.LoadAvg[1])
	fmt.Fprintf(out, "target: <= %.1f ns per forwarded frame (ns/fwd) for one 10 GbE port at 64-byte line rate on one core\n\n", rep.TargetNsPerFwd)
	if rep.Guests > 1 {
		var mis uint64
		for _, r := range rep.Rows {
			mis += r.Misdelivered
		}
		fmt.Fprintf(out, "%d guests share the port: Mpps is through all of them together; misdelivered %d\n\n", rep.Guests, mis)
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "mode\tsize\toffered pps\tMpps\tGbit/s\tns/pkt\tcyc/pkt\tns/fwd\tpkts/poll\tbusy %\tpreempted %\tns/pkt on-CPU\tlat p50 us\tlat p99 us\tlost\tfaults\t")
	for _, r := range rep.Rows {
		offered := fmt.Sprintf("%.0f", r.RateOffered)
		if r.AutoRate {
			offered += " (auto)"
		}
		fmt.Fprintf(w, "%s\t%d\t%s\t%.3f\t%.3f\t%.1f\t%.0f\t%.1f\t%.1f\t%.0f\t%.0f\t%.1f\t%.0f\t%.0f\t%d\t%d\t\n",
			r.Mode, r.FrameSize, offered, r.Mpps, r.GbpsL1, r.NsPerPacket, r.CyclesPerPacket, r.NsPerForwarded,
			r.PacketsPerPoll, r.LcoreBusyPct, r.PreemptedPct, r.NsPerPacketOnCPU, r.LatencyP50Us, r.LatencyP99Us, r.Lost, r.IOMMUFaults)
	}
	w.Flush()
	fmt.Fprintln(out, "\npreempted %: share of the run the lcore's thread waited for its CPU (schedstat); ns/pkt on-CPU: ns/pkt without that share, assuming preemption hits busy and idle polls alike")
}

// schedstat is a thread's /proc schedstat: time on a CPU and time
// runnable but waiting for one.
type schedstat struct{ run, wait time.Duration }

// threadSchedstat reads /proc/self/task/tid/schedstat.
func threadSchedstat(tid int) (schedstat, bool) {
	if tid <= 0 {
		return schedstat{}, false
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/self/task/%d/schedstat", tid))
	if err != nil {
		return schedstat{}, false
	}
	f := strings.Fields(string(b))
	if len(f) < 2 {
		return schedstat{}, false
	}
	run, err1 := strconv.ParseInt(f[0], 10, 64)
	wait, err2 := strconv.ParseInt(f[1], 10, 64)
	if err1 != nil || err2 != nil {
		return schedstat{}, false
	}
	return schedstat{time.Duration(run), time.Duration(wait)}, true
}

// lcoreThread finds the thread of this process pinned to exactly cpu: the
// lcore's (the runner pins no other thread, and keeps one lcore per CPU).
// It returns 0 if there is not exactly one.
func lcoreThread(cpu int) int {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return 0
	}
	found := 0
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		var set unix.CPUSet
		if unix.SchedGetaffinity(tid, &set) != nil || set.Count() != 1 || !set.IsSet(cpu) {
			continue
		}
		if found != 0 {
			return 0
		}
		found = tid
	}
	return found
}

// cpuClock is the clock rate cycles/packet is computed with, and where it
// came from.
type cpuClock struct {
	GHz    float64 `json:"ghz"`
	Method string  `json:"method"`
}

// detectClock finds the clock rate of cpu: the nominal (base) frequency
// from cpufreq when the driver reports one, else "cpu MHz" from
// /proc/cpuinfo, which without a cpufreq driver is the kernel's calibrated
// TSC rate (and with one, the frequency at this moment).
func detectClock(cpu int) cpuClock {
	sysfs := fmt.Sprintf("/sys/devices/system/cpu/cpu%d/cpufreq", cpu)
	if b, err := os.ReadFile(filepath.Join(sysfs, "base_frequency")); err == nil {
		if khz, err := strconv.ParseFloat(strings.TrimSpace(string(b)), 64); err == nil && khz > 0 {
			return cpuClock{GHz: khz / 1e6, Method: fmt.Sprintf("nominal base frequency of CPU %d (%s/base_frequency)", cpu, sysfs)}
		}
	}
	mhz, flags, err := cpuinfo(cpu)
	if err != nil || mhz <= 0 {
		return cpuClock{Method: fmt.Sprintf("unknown (%v): give --ghz", err)}
	}
	how := "no cpufreq driver, so the kernel's calibrated TSC rate"
	if _, err := os.Stat(sysfs); err == nil {
		how = "a cpufreq driver is loaded, so this is the frequency when bench started, not necessarily the nominal one"
	}
	for _, f := range []string{"constant_tsc", "tsc_known_freq"} {
		if strings.Contains(" "+flags+" ", " "+f+" ") {
			how += "; " + f
		}
	}
	return cpuClock{GHz: mhz / 1e3, Method: fmt.Sprintf("\"cpu MHz\" of CPU %d in /proc/cpuinfo (%s)", cpu, how)}
}

// cpuinfo returns the "cpu MHz" and "flags" lines of cpu in /proc/cpuinfo.
func cpuinfo(cpu int) (mhz float64, flags string, err error) {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0, "", err
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	s.Buffer(make([]byte, 0, 64<<10), 1<<20)
	current := -1
	for s.Scan() {
		key, val, ok := strings.Cut(s.Text(), ":")
		if !ok {
			continue
		}
		key, val = strings.TrimSpace(key), strings.TrimSpace(val)
		switch {
		case key == "processor":
			current, _ = strconv.Atoi(val)
		case current != cpu:
		case key == "cpu MHz":
			mhz, err = strconv.ParseFloat(val, 64)
			if err != nil {
				return 0, "", fmt.Errorf("/proc/cpuinfo: cpu MHz %q: %w", val, err)
			}
		case key == "flags":
			flags = val
		}
	}
	if err := s.Err(); err != nil {
		return 0, "", fmt.Errorf("read /proc/cpuinfo: %w", err)
	}
	if mhz == 0 {
		return 0, "", fmt.Errorf("/proc/cpuinfo has no cpu MHz for CPU %d", cpu)
	}
	return mhz, flags, nil
}

// loadAvg is the first three fields of /proc/loadavg, or "unknown".
func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}
