package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"sort"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
)

// simOptions are the flags of `zcnet sim`.
type simOptions struct {
	lcores      string
	duration    time.Duration
	period      time.Duration
	rate        float64
	frameSize   int
	flows       int
	copy        bool
	json        bool
	tap         string
	vhost       string
	guestMAC    string
	noPacked    bool
	rxd, txd    int
	telemetry   string
	metricsAddr string
	memLimit    string // --vhost-mem-limit

	pageSize hugepage.PageSize // tests: 4 KiB pages instead of hugepages
}

func newSimCommand(a *app) *cobra.Command {
	o := &simOptions{}
	cmd := &cobra.Command{
		Use:   "sim",
		Short: "Run the zero-copy data path on a simulated 82599 with a traffic generator and a guest",
		Long: `sim runs the whole data path without hardware: a register-level 82599
model (free-running DMA engines behind a modelled IOMMU), the zero-copy
engine on pinned lcores, and a vhost-user guest over a real unix socket.

The wire side is a traffic generator and a verifying sink (or, with --tap, a
Linux TAP interface). The guest side is the built-in test guest, which
echoes every frame back with the MAC addresses swapped (testpmd's macswap),
or with --vhost PATH an external vhost-user front end (dpdk-testpmd with
virtio-user, QEMU) that connects to the server socket at PATH.

Every --stats-period it prints a line: generator rate, NIC rx/tx, guest
rx/tx, frames moved zero-copy and copied, drops by cause and lcore load.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runSim(ctx, a.log, o, cmd.OutOrStdout(), cmd.ErrOrStderr())
		},
	}
	f := cmd.Flags()
	f.StringVarP(&o.lcores, "lcores", "l", "", "poll core, DPDK -l syntax; default: the last allowed CPU")
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (0: until SIGINT/SIGTERM)")
	f.DurationVar(&o.period, "stats-period", time.Second, "print a statistics line this often (0: only the summary)")
	f.Float64Var(&o.rate, "rate", 50000, "generator rate in frames per second")
	f.IntVar(&o.frameSize, "frame-size", 64, "frame size on the wire, FCS included (64 to 1518)")
	f.IntVar(&o.flows, "flows", 1, "number of UDP flows the generator cycles through")
	f.BoolVar(&o.copy, "copy", false, "force the copy path (to compare with zero-copy)")
	f.BoolVar(&o.json, "json", false, "print the final summary as JSON on stdout (statistics lines go to stderr)")
	f.StringVar(&o.tap, "tap", "", "connect the simulated port's wire to a TAP interface of this name instead of the generator and sink")
	f.StringVar(&o.vhost, "vhost", "", "serve an external vhost-user front end on this socket path instead of the built-in guest; PATH,mode=0660,group=kvm gives the socket (default mode 0600) to a front end running as another user")
	f.StringVar(&o.guestMAC, "guest-mac", "", "the guest's MAC, accepted by the NIC's filter from the start and reported in the guest's config space (the generator then sends to it); default: learned from the guest's frames")
	f.BoolVar(&o.noPacked, "no-packed", false, "do not offer packed virtqueues (VIRTIO_F_RING_PACKED) to the guest; IN_ORDER is never offered, as the zero-copy engine completes RX buffers out of order")
	f.IntVar(&o.rxd, "rxd", 2048, "NIC RX descriptors")
	f.IntVar(&o.txd, "txd", 2048, "NIC TX descriptors")
	f.StringVar(&o.telemetry, "telemetry", defaultTelemetryPath(), "telemetry socket for `zcnet stats` (\"\" for none)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics on this address (e.g. 127.0.0.1:9464)")
	f.StringVar(&o.memLimit, "vhost-mem-limit", "", memLimitHelp)
	return cmd
}

// simRun is one `zcnet sim` instance: the appliance on a simulated PF and
// what stands on either side of it.
type simRun struct {
	o     *simOptions
	pf    *sim.PF
	app   *appliance.Appliance
	log   *zap.Logger
	gen   *wire.Generator
	sink  *wire.Sink
	tap   *wire.TAP
	guest *guest.Echo
}

func (o *simOptions) check() error {
	switch {
	case o.rate <= 0:
		return fmt.Errorf("--rate %g: give a positive frame rate", o.rate)
	case o.frameSize < wire.MinFrameSize || o.frameSize > 1518:
		return fmt.Errorf("--frame-size %d: use %d to 1518", o.frameSize, wire.MinFrameSize)
	case o.flows < 1 || o.flows > 65536:
		return fmt.Errorf("--flows %d: use 1 to 65536", o.flows)
	case o.duration < 0 || o.period < 0:
		return errors.New("--duration and --stats-period must not be negative")
	}
	return nil
}

func runSim(ctx context.Context, log *zap.Logger, o *simOptions, out, errOut io.Writer) error {
	if err := o.check(); err != nil {
		return err
	}
	vs, err := parseVhostFlag(o.vhost) // PATH[,mode=0660][,group=kvm]
	if err != nil {
		return err
	}
	if vs.MAC != "" && o.guestMAC != "" {
		return errors.New("--guest-mac and --vhost PATH,mac=: give the guest's MAC once")
	} else if vs.MAC == "" {
		vs.MAC = o.guestMAC
	}
	tel, err := openTelemetry(log, o.telemetry, o.metricsAddr)
	if err != nil {
		return err
	}
	defer tel.close()
	socket := vs.Socket
	if socket == "" {
		dir, err := os.MkdirTemp("", "zcnet-sim-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		socket = filepath.Join(dir, "guest.sock")
	}
	r := &simRun{o: o, log: log, pf: sim.NewPF(sim.DefaultOptions())}
	spec := appliance.Spec{
		Lcores: o.lcores,
		NICs: []appliance.NICSpec{{PCI: "sim:" + r.pf.Address(), Rxd: o.rxd, Txd: o.txd, Copy: o.copy, NoPacked: o.noPacked,
			Guests: []appliance.GuestSpec{{Socket: socket, MAC: vs.MAC, Mode: vs.Mode, Group: vs.Group}}}},
		PageSize: o.pageSize,
	}
	applyMemLimitFlag(&spec, o.memLimit)
	r.app, err = appliance.Open(spec, simOpener(r.pf), appliance.WithLogger(log))
	if err != nil {
		return err
	}
	defer r.app.Shutdown()
	defer tel.close() // first: no snapshot runs while the data path shuts down
	if err := r.attachWire(); err != nil {
		return err
	}
	if r.tap != nil {
		defer r.tap.Close()
	}
	r.pf.Start()
	// The lcores poll until Shutdown, not until ctx ends: frames the
	// generator sends after SIGINT/SIGTERM, until it stops and the sink
	// has drained, must still be moved and counted before the final
	// snapshot.
	if err := r.app.Run(context.Background()); err != nil {
		return err
	}
	// Every field snapshot reads is set before the telemetry socket,
	// which calls it from its own goroutine, starts serving.
	if o.vhost == "" {
		if r.guest, err = guest.StartEcho(socket); err != nil {
			return err
		}
		defer r.guest.Close()
	}
	tel.serve(r.snapshot)
	if r.guest != nil {
		r.waitGuestReady()
	} else {
		log.Info("waiting for a vhost-user front end", zap.String("socket", socket))
	}
	if r.gen != nil {
		if err := r.gen.Start(); err != nil {
			return err
		}
	}
	lines := out
	if o.json {
		lines = errOut
	}
	if err := r.loop(ctx, lines); err != nil {
		if r.gen != nil {
			r.gen.Stop()
		}
		return err // the deferred shutdown stops the rest
	}
	if r.gen != nil {
		r.gen.Stop()
		drain(r.sink, r.gen.Sent())
	}
	final := r.snapshot()
	tel.close()
	// Shut down before reporting faults: an unmap under a live DMA would
	// show up as an IOMMU fault only now.
	if err := r.app.Shutdown(); err != nil {
		return err
	}
	final.Traffic.IOMMUFaults = r.pf.Counters().IOMMUFaults
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(final); err != nil {
			return err
		}
	} else {
		printSummary(out, &final)
	}
	if n := final.Traffic.IOMMUFaults; n != 0 {
		return fmt.Errorf("the simulated NIC counted %d IOMMU faults: DMA outside the mapped memory", n)
	}
	return nil
}

// nicMAC is the first NIC port's permanent address.
func nicMAC(a *appliance.Appliance) wire.MAC {
	m, _ := net.ParseMAC(a.NICs()[0].MAC)
	return wire.MAC(m)
}

// simOpener opens pf whatever the address: the one simulated 82599 of
// zcnet sim and zcnet bench.
func simOpener(pf *sim.PF) appliance.Opener {
	return func(string) (vfio.Device, error) { return pf, nil }
}

// attachWire connects the simulated port's wire: generator in, sink out;
// or a TAP both ways.
func (r *simRun) attachWire() error {
	if r.o.tap != "" {
		t, err := wire.OpenTAP(r.o.tap)
		if err != nil {
			return fmt.Errorf("--tap %s: %w", r.o.tap, err)
		}
		r.tap = t
		r.pf.Attach(t)
		t.Attach(r.pf)
		return nil
	}
	r.sink = wire.NewSink(nil)
	r.pf.Attach(r.sink)
	// The generator is the guest's peer on the wire: it sends to the
	// guest's MAC if one is configured, else to the port's own.
	dst := nicMAC(r.app)
	if g := r.app.Guests(); len(g) > 0 && g[0].MACSource == "configured" {
		m, err := net.ParseMAC(g[0].MAC)
		if err != nil {
			return err
		}
		dst = wire.MAC(m)
	}
	var err error
	r.gen, err = wire.NewGenerator(wire.GeneratorConfig{
		DstMAC: dst, FrameSize: r.o.frameSize,
		Flows: r.o.flows, Rate: r.o.rate,
	}, r.pf)
	return err
}

// waitGuestReady waits (up to 2 s) until the guest's memory is mapped and
// its receive buffers are on the NIC, so the first frames are not dropped
// for want of buffers.
func (r *simRun) waitGuestReady() {
	for deadline := time.Now().Add(2 * time.Second); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if g := r.app.Guests(); len(g) > 0 && g[0].Ready {
			break
		}
	}
	time.Sleep(20 * time.Millisecond) // a few polls: the port posts the buffers
}

// loop prints a statistics line every period until ctx ends or the
// duration is over; it returns an error at once if an lcore died.
func (r *simRun) loop(ctx context.Context, out io.Writer) error {
	if r.o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, r.o.duration)
		defer cancel()
	}
	var tick <-chan time.Time
	if r.o.period > 0 {
		t := time.NewTicker(r.o.period)
		defer t.Stop()
		tick = t.C
	}
	prev, prevAt := r.snapshot(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-r.app.Failed():
			return logLcoreDeath(r.log, err)
		case now := <-tick:
			cur := r.snapshot()
			fmt.Fprintln(out, rateLine(&prev, &cur, now.Sub(prevAt).Seconds()))
			prev, prevAt = cur, now
		}
	}
}

// snapshot is the appliance's counters plus the simulated wire's.
func (r *simRun) snapshot() appliance.Snapshot {
	s := r.app.Snapshot("sim")
	t := &appliance.TrafficCounters{}
	if r.gen != nil {
		t.GeneratorSent = r.gen.Sent()
		st := r.sink.Stats()
		t.SinkReceived, t.SinkLost = st.Received, st.Lost
		t.SinkBad = st.BadIPChecksum + st.BadUDPChecksum
		t.LatencyP50Us = float64(st.Latency.P50) / 1e3
		t.LatencyP99Us = float64(st.Latency.P99) / 1e3
	}
	if r.tap != nil {
		ts := r.tap.Stats()
		t.TAPFromKernel, t.TAPToKernel = ts.RxFrames, ts.TxFrames
		t.TAPPadded, t.TAPReadErrors, t.TAPWriteErrors = ts.RxPadded, ts.RxErrors, ts.TxErrors
	}
	if r.guest != nil {
		t.BuiltinGuest = true
		t.GuestRx, t.GuestTx, t.GuestDropped = r.guest.Received(), r.guest.Sent(), r.guest.Dropped()
	}
	c := r.pf.Counters()
	t.IOMMUFaults, t.SimRxFIFOFull, t.SimRxQueueOff, t.SimRxNotReady = c.IOMMUFaults, c.RxFIFOFull, c.RxQueueOff, c.RxNotReady
	t.SimTxNoLink, t.SimTxDMAFaults = c.TxNoLink, c.TxDMAFault
	t.SimTxMalformed, t.SimRxDMAFaults = c.TxMalformed, c.RxDMAFault
	s.Traffic = t
	return s
}

// rateLine is one statistics line: per-second rates between two snapshots.
func rateLine(prev, cur *appliance.Snapshot, secs float64) string {
	if secs <= 0 {
		secs = 1
	}
	p, c := prev.Totals(), cur.Totals()
	rate := func(a, b uint64) string { return siRate(float64(b-a) / secs) }
	gen := "-"
	if prev.Traffic != nil && cur.Traffic != nil {
		gen = rate(prev.Traffic.GeneratorSent, cur.Traffic.GeneratorSent)
	}
	busy := 0.0
	if d := (c.BusySeconds - p.BusySeconds) + (c.IdleSeconds - p.IdleSeconds); d > 0 {
		busy = 100 * (c.BusySeconds - p.BusySeconds) / d
	}
	return fmt.Sprintf("%5.0fs gen %s pps | NIC rx %s tx %s | guest rx %s tx %s | zero-copy %s copied %s | drops/s nic-full %s no-desc %s nic-discard %s engine %s | lcore busy %3.0f%%",
		cur.UptimeSeconds, gen, rate(p.NICRx, c.NICRx), rate(p.NICTx, c.NICTx),
		rate(p.GuestRx, c.GuestRx), rate(p.GuestTx, c.GuestTx),
		rate(p.ZeroCopy, c.ZeroCopy), rate(p.Copied, c.Copied),
		rate(p.NICMissed, c.NICMissed), rate(p.NICNoDescriptor, c.NICNoDescriptor), rate(p.NICDiscarded, c.NICDiscarded), rate(p.Drops, c.Drops), busy)
}

// siRate formats v with a k/M suffix in 6 columns.
func siRate(v float64) string {
	switch {
	case v >= 1e6:
		return fmt.Sprintf("%5.2fM", v/1e6)
	case v >= 1e3:
		return fmt.Sprintf("%5.1fk", v/1e3)
	}
	return fmt.Sprintf("%6.0f", v)
}

// printSummary is the human-readable end of a run.
func printSummary(out io.Writer, s *appliance.Snapshot) {
	t := s.Totals()
	secs := s.UptimeSeconds
	fmt.Fprintf(out, "summary after %.1fs: NIC rx %d tx %d, guest rx %d tx %d, zero-copy %d, copied %d (%.2f Mpps through the guest)\n",
		secs, t.NICRx, t.NICTx, t.GuestRx, t.GuestTx, t.ZeroCopy, t.Copied, float64(t.GuestTx)/max(secs, 1e-9)/1e6)
	fmt.Fprintf(out, "drops: NIC packet buffer full %d, no RX descriptor %d, discarded by the NIC %d%s, engine %d%s\n",
		t.NICMissed, t.NICNoDescriptor, t.NICDiscarded, nicDiscardCauses(s), t.Drops, nonZeroCauses(s))
	if tr := s.Traffic; tr != nil {
		if tr.GeneratorSent > 0 {
			fmt.Fprintf(out, "wire: generator sent %d, sink received %d, lost %d, bad checksums %d, latency p50 %.0fus p99 %.0fus\n",
				tr.GeneratorSent, tr.SinkReceived, tr.GeneratorSent-min(tr.SinkReceived, tr.GeneratorSent), tr.SinkBad, tr.LatencyP50Us, tr.LatencyP99Us)
		}
		if tr.TAPFromKernel+tr.TAPToKernel > 0 {
			fmt.Fprintln(out, tapLine(tr))
		}
		if tr.BuiltinGuest {
			fmt.Fprintf(out, "guest: echoed %d of %d, dropped %d\n", tr.GuestTx, tr.GuestRx, tr.GuestDropped)
		}
		fmt.Fprintf(out, "IOMMU faults %d\n", tr.IOMMUFaults)
	}
}

// tapLine is the TAP's counters in one line.
func tapLine(tr *appliance.TrafficCounters) string {
	return fmt.Sprintf("tap: from the kernel %d (padded to 60 bytes %d), to the kernel %d; read errors %d, frames the kernel refused %d",
		tr.TAPFromKernel, tr.TAPPadded, tr.TAPToKernel, tr.TAPReadErrors, tr.TAPWriteErrors)
}

// nicDiscardCauses lists the NICs' discard causes that counted, as
// " (cause n, ...)".
func nicDiscardCauses(s *appliance.Snapshot) string {
	sum := map[string]uint64{}
	for i := range s.NICs {
		for k, v := range s.NICs[i].Discards() {
			sum[k] += v
		}
	}
	return causeList(sum)
}

// nonZeroCauses lists engine drop causes that counted, as " (cause n, ...)".
func nonZeroCauses(s *appliance.Snapshot) string {
	sum := map[string]uint64{}
	for _, p := range s.Ports {
		for k, v := range p.Drops {
			sum[k] += v
		}
	}
	return causeList(sum)
}

// causeList formats the non-zero counts of sum as " (cause n, ...)", or ""
// if there are none.
func causeList(sum map[string]uint64) string {
	keys := make([]string, 0, len(sum))
	for k, v := range sum {
		if v > 0 {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return ""
	}
	sort.Strings(keys)
	str := " ("
	for i, k := range keys {
		if i > 0 {
			str += ", "
		}
		str += fmt.Sprintf("%s %d", k, sum[k])
	}
	return str + ")"
}
