package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
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
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
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
	spec := appliance.Spec{
		Lcores: o.lcores,
		NICs: []appliance.NICSpec{{PCI: "sim:" + sim.DefaultOptions().Address, Rxd: o.rxd, Txd: o.txd, Copy: o.copy, NoPacked: o.noPacked,
			Guests: []appliance.GuestSpec{{Socket: socket, MAC: vs.MAC, Mode: vs.Mode, Group: vs.Group}}}},
		PageSize: o.pageSize,
	}
	applyMemLimitFlag(&spec, o.memLimit)
	cfg := rig.Config{Spec: spec, Options: []appliance.Option{appliance.WithLogger(log)}, TAP: o.tap, Guest: o.vhost == ""}
	if o.tap == "" {
		cfg.Generator = &wire.GeneratorConfig{FrameSize: o.frameSize, Flows: o.flows, Rate: o.rate}
	}
	r, err := rig.Open(cfg)
	if err != nil {
		return err
	}
	defer r.Close()
	defer tel.close() // first: no snapshot runs while the data path shuts down
	// The lcores poll until Shutdown, not until ctx ends: frames the
	// generator sends after SIGINT/SIGTERM, until it stops and the sink
	// has drained, must still be moved and counted before the final
	// snapshot.
	if err := r.Run(context.Background()); err != nil {
		return err
	}
	snapshot := func() appliance.Snapshot { return r.Snapshot("sim") }
	tel.serve(snapshot)
	if r.Guest == nil {
		log.Info("waiting for a vhost-user front end", zap.String("socket", socket))
	}
	if r.Gen != nil {
		if err := r.Gen.Start(); err != nil {
			return err
		}
	}
	lines := out
	if o.json {
		lines = errOut
	}
	if err := simLoop(ctx, log, o, r.App, snapshot, lines); err != nil {
		return err // the deferred close stops the generator and the rest
	}
	if r.Gen != nil {
		r.Gen.Stop()
		r.Drain()
	}
	final := snapshot()
	tel.close()
	// Shut down before reporting faults: an unmap under a live DMA would
	// show up as an IOMMU fault only now.
	if err := r.Shutdown(); err != nil {
		return err
	}
	final.Traffic.IOMMUFaults = r.Port.PF.Counters().IOMMUFaults
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

// simLoop prints a statistics line every period until ctx ends or the
// duration is over; it returns an error at once if an lcore died.
func simLoop(ctx context.Context, log *zap.Logger, o *simOptions, app *appliance.Appliance, snapshot func() appliance.Snapshot, out io.Writer) error {
	ctx, tick, release := runWindow(ctx, o.duration, o.period)
	defer release()
	prev, prevAt := snapshot(), time.Now()
	for {
		select {
		case <-ctx.Done():
			return nil
		case err := <-app.Failed():
			return logLcoreDeath(log, err)
		case now := <-tick:
			cur := snapshot()
			fmt.Fprintln(out, rateLine(&prev, &cur, now.Sub(prevAt).Seconds()))
			prev, prevAt = cur, now
		}
	}
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
