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
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
)

// simOptions are the flags of `zcnet sim`.
type simOptions struct {
	lcores      string
	duration    time.Duration
	period      time.Duration
	rate        string // a frame rate, or "auto"
	ramp        rampOptions
	autoFrac    float64 // --auto-fraction
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
	guests      int
	vfs         int
	bcastEvery  int // --broadcast-every

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
rx/tx, frames moved zero-copy and copied, drops by cause and lcore load.

--guests N puts N built-in guests with their own MACs (52:54:00:00:00:01,
...02, ...) on the one simulated port, each a pool of the 82599, which
steers every frame to the guest its destination MAC belongs to. The
generator addresses them in turn, and with --broadcast-every K sends every
K-th frame to ff:ff:ff:ff:ff:ff, which reaches every guest. A guest's echo
of a broadcast has the broadcast address as its source, and the NIC's
anti-spoofing drops it (tx_spoofed): those echoes are not lost frames. The
summary prints per guest what the generator addressed to it, what it
received (broadcasts among them) and echoed, and misdelivered: unicast
frames that reached a guest whose MAC is not their destination, which must
be 0 (zcnet sim fails otherwise).

--vfs N is the usual SR-IOV deployment instead: the simulated port's PF is
kept by the host's Linux driver (simulated), and N built-in guests are each
on a VF of their own (NIC ports sim:...:00.0/vf0, /vf1, ...), with their own
IOMMU domain and the MAC the host assigned the VF. The generator addresses
them in turn; the summary is the per-guest one of --guests.

--rate auto first finds the highest rate the built-in generator and guest
sustain without loss, with zcnet bench's ramp (doubling from --start-rate,
then bisecting to within 5%, each trial --trial long, never above
--max-rate), in a throwaway appliance opened with the same configuration,
one progress line per trial (on stderr with --json); then it runs a new
appliance at --auto-fraction of that rate (or of the lowest rate tried if
no trial was loss-free). The default 0.8 leaves room because the found
rate is a peak: the simulator, generator, sink and guest share the CPUs
the lcore leaves, and a run longer than a trial meets more of their
scheduling stalls. The per-second lines, counters, uptime and summary
cover only that measured run. Not with --tap or --vhost: the ramp drives
the built-in generator and counts the built-in guest's echoes.

The summary's poll core line gives Mpps through the guest: frames the
guest sent back to the engine per second the generator sent (zcnet bench's
Mpps counts the sink's frames over the same seconds). Over the lcore's
whole run it gives lcore busy %, the time in rounds that moved frames over
all polling time, and ns per frame moved: the lcore's busy time (its
per-task clock, read only around polls that moved frames) over the frames
it moved in both directions, wire->guest plus guest->wire, so an echoed
frame counts twice (zcnet bench's ns/pkt). The wire line gives the round-trip latency
from the generator's stamp to the sink: p50, p99, p99.9 and max.`,
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
	f.StringVar(&o.rate, "rate", "50000", `generator rate in frames per second, or "auto": the highest loss-free rate found by a ramp before the run, times --auto-fraction`)
	o.ramp.addFlags(f)
	f.Float64Var(&o.autoFrac, "auto-fraction", 0.8, "auto: run at this fraction (0 to 1] of the highest loss-free rate the ramp found")
	f.IntVar(&o.frameSize, "frame-size", 64, "frame size on the wire, FCS included (64 to 1518)")
	f.IntVar(&o.flows, "flows", 1, "number of UDP flows the generator cycles through")
	f.BoolVar(&o.copy, "copy", false, "force the copy path (to compare with zero-copy)")
	f.BoolVar(&o.json, "json", false, "print the final summary as JSON on stdout (statistics lines go to stderr)")
	f.StringVar(&o.tap, "tap", "", "connect the simulated port's wire to a TAP interface of this name instead of the generator and sink")
	f.StringVar(&o.vhost, "vhost", "", "serve an external vhost-user front end on this socket path instead of the built-in guest; QEMU may live-migrate it (dirty logging, SEND_RARP) unless PATH,migration=off; PATH,mode=0660,group=kvm gives the socket (default mode 0600) to a front end running as another user")
	f.StringVar(&o.guestMAC, "guest-mac", "", "the guest's MAC, accepted by the NIC's filter from the start and reported in the guest's config space (the generator then sends to it); default: learned from the guest's frames")
	f.BoolVar(&o.noPacked, "no-packed", false, "do not offer packed virtqueues (VIRTIO_F_RING_PACKED) to the guest; IN_ORDER is never offered, as the zero-copy engine completes RX buffers out of order")
	f.IntVar(&o.rxd, "rxd", 2048, "NIC RX descriptors")
	f.IntVar(&o.txd, "txd", 2048, "NIC TX descriptors")
	f.StringVar(&o.telemetry, "telemetry", defaultTelemetryPath(), "telemetry socket for `zcnet stats` (\"\" for none)")
	f.StringVar(&o.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics on this address (e.g. 127.0.0.1:9464)")
	f.StringVar(&o.memLimit, "vhost-mem-limit", "", memLimitHelp)
	f.IntVar(&o.guests, "guests", 1, "built-in guests on the simulated port (1 to 64), each with its own MAC (52:54:00:00:00:01, ...02, ...); the generator addresses them in turn")
	f.IntVar(&o.vfs, "vfs", 0, "built-in guests each on its own SR-IOV VF of the simulated port (1 to 63), whose PF the host's Linux driver keeps (simulated) and whose MACs it assigns; the generator addresses them in turn")
	f.IntVar(&o.bcastEvery, "broadcast-every", 0, "send every K-th generated frame to the broadcast address ff:ff:ff:ff:ff:ff (0: none)")
	return cmd
}

func (o *simOptions) check() error {
	rate, err := parseRate(o.rate)
	if err != nil {
		return err
	}
	if rate == 0 {
		if err := o.checkAuto(); err != nil {
			return err
		}
	}
	switch {
	case o.frameSize < wire.MinFrameSize || o.frameSize > 1518:
		return fmt.Errorf("--frame-size %d: use %d to 1518", o.frameSize, wire.MinFrameSize)
	case o.flows < 1 || o.flows > 65536:
		return fmt.Errorf("--flows %d: use 1 to 65536", o.flows)
	case o.duration < 0 || o.period < 0:
		return errors.New("--duration and --stats-period must not be negative")
	case o.guests < 1 || o.guests > maxSimGuests:
		return fmt.Errorf("--guests %d: use 1 to %d", o.guests, maxSimGuests)
	case o.guests > 1 && (o.vhost != "" || o.tap != "" || o.guestMAC != ""):
		return fmt.Errorf("--guests %d: the guests are built in and their MACs derived (52:54:00:00:00:01, ...), fed by the generator: not with --vhost, --tap or --guest-mac", o.guests)
	case o.vfs < 0 || o.vfs > maxSimVFs:
		return fmt.Errorf("--vfs %d: use 1 to %d", o.vfs, maxSimVFs)
	case o.vfs > 0 && (o.guests > 1 || o.vhost != "" || o.tap != "" || o.guestMAC != "" || o.bcastEvery > 0):
		return fmt.Errorf("--vfs %d: the guests are built in, one per VF with the MAC the host gave it, fed by the generator: not with --guests, --vhost, --tap, --guest-mac or --broadcast-every", o.vfs)
	case o.bcastEvery < 0:
		return fmt.Errorf("--broadcast-every %d must not be negative", o.bcastEvery)
	case o.bcastEvery > 0 && o.tap != "":
		return errors.New("--broadcast-every: the generator sends the broadcasts, and --tap replaces it")
	}
	return nil
}

// checkAuto refuses what --rate auto cannot ramp: the ramp drives the
// built-in generator and counts what the built-in guest echoes back.
func (o *simOptions) checkAuto() error {
	switch {
	case o.tap != "":
		return errors.New("--rate auto: the ramp drives the built-in traffic generator, which --tap replaces with a TAP interface: not with --tap")
	case o.vhost != "":
		return errors.New("--rate auto: the ramp counts the frames the built-in guest echoes, and --vhost serves an external front end instead: not with --vhost")
	case !(o.autoFrac > 0 && o.autoFrac <= 1):
		return fmt.Errorf("--auto-fraction %g: give a fraction in (0, 1]", o.autoFrac)
	}
	return o.ramp.check()
}

// maxSimGuests is the most built-in guests on one simulated port: the
// 82599's 64 pools of 2 queues.
const maxSimGuests = 64

// maxSimVFs is the most VFs of the simulated port (Linux keeps one of
// the 82599's 64 pools for the PF).
const maxSimVFs = 63

// simVFNICs are the NIC ports of zcnet sim --vfs n: VF i of the
// simulated port with its built-in guest (socket guest<i>.sock in dir,
// the MAC the host assigned the VF).
func simVFNICs(pf string, dir string, n int, base appliance.NICSpec) []appliance.NICSpec {
	nics := make([]appliance.NICSpec, n)
	for i := range nics {
		addr := fmt.Sprintf("%s/vf%d", pf, i)
		mac := rig.VFMAC(addr)
		nics[i] = base
		nics[i].PCI = addr
		nics[i].Guests = []appliance.GuestSpec{{Socket: filepath.Join(dir, fmt.Sprintf("guest%d.sock", i)), MAC: net.HardwareAddr(mac[:]).String()}}
	}
	return nics
}

// simGuests are the n built-in guests of zcnet sim and bench --guests n
// (n > 1): sockets guest0.sock, guest1.sock, ... in dir, MACs
// 52:54:00:00:00:01, ...:02, and so on (locally administered by QEMU's
// convention, distinct, never the port's).
func simGuests(dir string, n int) []appliance.GuestSpec {
	gs := make([]appliance.GuestSpec, n)
	for i := range gs {
		gs[i] = appliance.GuestSpec{Socket: filepath.Join(dir, fmt.Sprintf("guest%d.sock", i)),
			MAC: fmt.Sprintf("52:54:00:00:00:%02x", i+1)}
	}
	return gs
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
	lines := out // statistics and ramp progress
	if o.json {
		lines = errOut
	}
	tel, err := openTelemetry(log, o.telemetry, o.metricsAddr)
	if err != nil {
		return err
	}
	defer tel.close()
	socket := vs.Socket
	var dir string
	if socket == "" {
		dir, err = os.MkdirTemp("", "zcnet-sim-")
		if err != nil {
			return err
		}
		defer os.RemoveAll(dir)
		socket = filepath.Join(dir, "guest.sock")
	}
	rate, _ := parseRate(o.rate) // checked: 0 is auto
	var auto *simAutoRate
	if rate == 0 {
		// The ramp's appliance is a separate one with its own sockets
		// (check refused --vhost, so dir is ours), closed before the
		// measured one opens: its counters, uptime and lcore clocks start
		// with the run.
		rampDir := filepath.Join(dir, "ramp")
		if err := os.Mkdir(rampDir, 0o700); err != nil {
			return err
		}
		cfg := simRigConfig(log, o, vs, filepath.Join(rampDir, "guest.sock"), 0)
		if auto, err = simRamp(ctx, o, cfg, lines); err != nil {
			return err
		}
		rate = auto.OfferedPps
	}
	r, err := rig.Open(simRigConfig(log, o, vs, socket, rate))
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
	start := time.Now()
	if r.Gen != nil {
		if err := r.Gen.Start(); err != nil {
			return err
		}
	}
	if err := simLoop(ctx, log, o, r.App, snapshot, lines); err != nil {
		return err // the deferred close stops the generator and the rest
	}
	// The poll core's rate is over the time the generator sent (as
	// zcnet bench's Mpps): the frames still in flight when it stops were
	// sent within it, and the drain's wait for them is not throughput.
	var sending time.Duration
	if r.Gen != nil {
		r.Gen.Stop()
		sending = time.Since(start)
		r.Drain()
	} else {
		sending = time.Since(start)
	}
	final := snapshot()
	sum := simSummaryJSON{Sim: simGuestSummary(r, &final, max(o.guests, o.vfs)), AutoRate: auto,
		PollCore: simPollFigures(&final, r.App.Lcores(), sending)}
	tel.close()
	// Shut down before reporting faults: an unmap under a live DMA would
	// show up as an IOMMU fault only now.
	if err := r.Shutdown(); err != nil {
		return err
	}
	final.Traffic.IOMMUFaults = r.Port.PF.Counters().IOMMUFaults
	sum.Snapshot = final
	if o.json {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		if err := enc.Encode(&sum); err != nil {
			return err
		}
	} else {
		printSimSummary(out, &sum)
	}
	if n := final.Traffic.IOMMUFaults; n != 0 {
		return fmt.Errorf("the simulated NIC counted %d IOMMU faults: DMA outside the mapped memory", n)
	}
	return sum.Sim.misdelivered()
}

// simRigConfig is the rig of zcnet sim's flags, its first guest's socket
// at socket, its generator (unless --tap) sending at rate (0: a ramp's
// rig, whose trials set the rate).
func simRigConfig(log *zap.Logger, o *simOptions, vs appliance.GuestSpec, socket string, rate float64) rig.Config {
	spec := appliance.Spec{
		Lcores: o.lcores,
		NICs: []appliance.NICSpec{{PCI: "sim:" + sim.DefaultOptions().Address, Rxd: o.rxd, Txd: o.txd, Copy: o.copy, NoPacked: o.noPacked,
			Guests: []appliance.GuestSpec{{Socket: socket, MAC: vs.MAC, Mode: vs.Mode, Group: vs.Group, Migration: vs.Migration}}}},
		PageSize: o.pageSize,
	}
	if o.guests > 1 {
		spec.NICs[0].MaxGuests = o.guests
		spec.NICs[0].Guests = simGuests(filepath.Dir(socket), o.guests)
	}
	if o.vfs > 0 {
		spec.NICs = simVFNICs(spec.NICs[0].PCI, filepath.Dir(socket), o.vfs, spec.NICs[0])
	}
	applyMemLimitFlag(&spec, o.memLimit)
	cfg := rig.Config{Spec: spec, Options: []appliance.Option{appliance.WithLogger(log)}, TAP: o.tap, Guest: o.vhost == ""}
	if o.tap == "" {
		cfg.Generator = &wire.GeneratorConfig{FrameSize: o.frameSize, Flows: o.flows, Rate: rate, BroadcastEvery: o.bcastEvery}
	}
	return cfg
}

// simAutoRate is what the ramp of zcnet sim --rate auto found, in the
// --json summary.
type simAutoRate struct {
	// LossFreePps is the highest rate a trial forwarded without loss (0
	// if none did, down to the ramp's floor); OfferedPps is the rate the
	// run's generator was given: Fraction of it, or of the lowest rate
	// tried when none was loss-free.
	LossFreePps  float64 `json:"loss_free_pps"`
	Fraction     float64 `json:"fraction"`
	OfferedPps   float64 `json:"offered_pps"`
	Trials       int     `json:"trials"`
	TrialSeconds float64 `json:"trial_seconds"`
}

// simRamp finds the rate of zcnet sim --rate auto with zcnet bench's
// search, on a rig of its own (cfg) that it closes before returning,
// printing a line per trial to progress.
func simRamp(ctx context.Context, o *simOptions, cfg rig.Config, progress io.Writer) (*simAutoRate, error) {
	r, err := rig.Open(cfg)
	if err != nil {
		return nil, fmt.Errorf("--rate auto: open the ramp's appliance: %w", err)
	}
	defer r.Close()
	if err := r.Run(ctx); err != nil {
		return nil, fmt.Errorf("--rate auto: run the ramp's appliance: %w", err)
	}
	b := &benchRun{Rig: r, frameSize: o.frameSize, progress: progress, label: "rate auto"}
	found := b.search(ctx, o.ramp)
	// Close reports the IOMMU faults of the ramp's simulated ports: a
	// fault there is as much a bug as one in the run.
	if err := r.Close(); err != nil {
		return nil, fmt.Errorf("--rate auto: the ramp's appliance: %w", err)
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("--rate auto: interrupted during the ramp: %w", err)
	}
	a := &simAutoRate{LossFreePps: b.best, Fraction: o.autoFrac, OfferedPps: found * o.autoFrac,
		Trials: b.trials, TrialSeconds: o.ramp.trial.Seconds()}
	if b.best > 0 {
		fmt.Fprintf(progress, "rate auto: highest loss-free rate %.0f pps (%d trials of %s); running at %g of it: %.0f pps\n",
			b.best, b.trials, o.ramp.trial, o.autoFrac, a.OfferedPps)
	} else {
		fmt.Fprintf(progress, "rate auto: no trial was loss-free, down to %.0f pps (%d trials of %s); running at %g of that: %.0f pps\n",
			found, b.trials, o.ramp.trial, o.autoFrac, a.OfferedPps)
	}
	return a, nil
}

// simPollCore is the poll lcores' figures of the run, as zcnet bench
// reports them per configuration.
type simPollCore struct {
	// Seconds is how long the generator sent (without one, the run from
	// its start to --duration or the signal): what MppsThroughGuest is
	// over. The lcore figures are over the lcores' whole run.
	Seconds float64 `json:"seconds"`
	// MppsThroughGuest: frames the guests sent back to the engine (the
	// ports' tx_packets) per second, in millions.
	MppsThroughGuest float64 `json:"mpps_through_guest"`
	// LcoreBusyPct: time in rounds that moved frames over all polling
	// time, the lcores together.
	LcoreBusyPct float64 `json:"lcore_busy_percent"`
	// PMDPackets: frames the lcores moved, both directions (an echoed
	// frame twice); PMDBusySeconds: the busy polls' time (the lcore
	// runner's per-task clock); NsPerPacket the one over the other.
	PMDPackets     uint64  `json:"pmd_packets"`
	PMDBusySeconds float64 `json:"pmd_busy_seconds"`
	NsPerPacket    float64 `json:"pmd_ns_per_packet"`
}

// simPollFigures computes the poll core's figures of a run from its
// final snapshot, its lcores' task clocks and how long traffic was sent
// (the run's length without a generator).
func simPollFigures(s *appliance.Snapshot, lcores []*pollmode.Lcore, sending time.Duration) *simPollCore {
	t := s.Totals()
	p := &simPollCore{Seconds: sending.Seconds(), PMDPackets: t.GuestRx + t.GuestTx}
	if p.Seconds > 0 {
		p.MppsThroughGuest = float64(t.GuestTx) / p.Seconds / 1e6
	}
	if all := t.BusySeconds + t.IdleSeconds; all > 0 {
		p.LcoreBusyPct = 100 * t.BusySeconds / all
	}
	var busy time.Duration
	for _, lc := range lcores {
		b, _ := taskBusy(lc.Stats())
		busy += b
	}
	p.PMDBusySeconds = busy.Seconds()
	if p.PMDPackets > 0 {
		p.NsPerPacket = float64(busy.Nanoseconds()) / float64(p.PMDPackets)
	}
	return p
}

// misdelivered is an error if a guest received unicast frames for
// another guest's MAC.
func (x *simExtra) misdelivered() error {
	if x == nil {
		return nil
	}
	var errs []error
	for i, g := range x.Guests {
		if g.Misdelivered != 0 {
			errs = append(errs, fmt.Errorf("guest %d (%s) received %d frames addressed to another MAC (misdelivered): the NIC steered them into the wrong guest's buffers", i, g.MAC, g.Misdelivered))
		}
	}
	return errors.Join(errs...)
}

// simSummaryJSON is zcnet sim's summary, and its --json output: the
// snapshot; under "sim", with several guests or broadcasts, the per-guest
// and broadcast accounting; the poll core's figures; and with --rate auto
// what the ramp found.
type simSummaryJSON struct {
	appliance.Snapshot
	Sim      *simExtra    `json:"sim,omitempty"`
	PollCore *simPollCore `json:"poll_core,omitempty"`
	AutoRate *simAutoRate `json:"auto_rate,omitempty"`
}

// simExtra is the accounting of zcnet sim --guests N and
// --broadcast-every K.
type simExtra struct {
	// UnicastSent is the generated frames with a probe: what the sink
	// should receive back (generator_sent less broadcast.sent);
	// UnicastLost those it did not.
	UnicastSent uint64 `json:"unicast_sent"`
	UnicastLost uint64 `json:"unicast_lost"`
	// Broadcast is nil without --broadcast-every.
	Broadcast *simBroadcast      `json:"broadcast,omitempty"`
	Guests    []rig.GuestTraffic `json:"guests"`
}

// simBroadcast accounts for the broadcast frames.
type simBroadcast struct {
	Sent uint64 `json:"sent"`
	// A copy of every broadcast is due at every built-in guest.
	CopiesExpected uint64 `json:"copies_expected"`
	CopiesReceived uint64 `json:"copies_received"`
	// The guests' echoes of broadcasts have the broadcast address as
	// their source: the NIC's anti-spoofing drops them (its
	// tx_spoofed, on a port with several guests); EchoesOnWire reached
	// the sink anyway (its frames without a probe).
	EchoesSpoofed uint64 `json:"echoes_dropped_as_spoofed"`
	EchoesOnWire  uint64 `json:"echoes_on_wire"`
}

// simGuestSummary is the per-guest and broadcast accounting of the run,
// or nil with one guest and no broadcasts (or no generator).
func simGuestSummary(r *rig.Rig, s *appliance.Snapshot, guests int) *simExtra {
	if r.Gen == nil || (guests <= 1 && r.Gen.Broadcasts() == 0) {
		return nil
	}
	x := &simExtra{UnicastSent: r.Gen.Probes(), Guests: r.GuestTraffic()}
	if s.Traffic != nil {
		x.UnicastLost = x.UnicastSent - min(x.UnicastSent, s.Traffic.SinkReceived)
	}
	if b := r.Gen.Broadcasts(); b > 0 {
		x.Broadcast = &simBroadcast{Sent: b, CopiesExpected: b * uint64(len(x.Guests)), EchoesOnWire: r.Port.Sink.Stats().Foreign}
		for _, g := range x.Guests {
			x.Broadcast.CopiesReceived += g.Broadcasts
		}
		for _, n := range s.NICs {
			x.Broadcast.EchoesSpoofed += n.TxSpoofed
		}
	}
	return x
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
	printSimSummary(out, &simSummaryJSON{Snapshot: *s})
}

// printSimSummary is printSummary with zcnet sim's additions: the poll
// core's line and (sum.Sim, nil with one guest and no broadcasts) the
// per-guest and broadcast accounting.
func printSimSummary(out io.Writer, sum *simSummaryJSON) {
	s, x, p := &sum.Snapshot, sum.Sim, sum.PollCore
	t := s.Totals()
	secs := s.UptimeSeconds
	// The rate through the guest is in the poll core's line when there
	// is one, so that a summary states it once.
	mpps := fmt.Sprintf(" (%.2f Mpps through the guest)", float64(t.GuestTx)/max(secs, 1e-9)/1e6)
	if p != nil {
		mpps = ""
	}
	fmt.Fprintf(out, "summary after %.1fs: NIC rx %d tx %d, guest rx %d tx %d, zero-copy %d, copied %d%s\n",
		secs, t.NICRx, t.NICTx, t.GuestRx, t.GuestTx, t.ZeroCopy, t.Copied, mpps)
	if p != nil {
		fmt.Fprintln(out, pollCoreLine(p))
	}
	fmt.Fprintf(out, "drops: NIC packet buffer full %d, no RX descriptor %d, discarded by the NIC %d%s, engine %d%s\n",
		t.NICMissed, t.NICNoDescriptor, t.NICDiscarded, nicDiscardCauses(s), t.Drops, nonZeroCauses(s))
	if tr := s.Traffic; tr != nil {
		switch {
		case x != nil && x.Broadcast != nil:
			fmt.Fprintf(out, "wire: generator sent %d (unicast %d, broadcast %d), sink received %d of the unicast, lost %d, bad checksums %d, %s\n",
				tr.GeneratorSent, x.UnicastSent, x.Broadcast.Sent, tr.SinkReceived, x.UnicastLost, tr.SinkBad, latencies(tr))
		case tr.GeneratorSent > 0:
			fmt.Fprintf(out, "wire: generator sent %d, sink received %d, lost %d, bad checksums %d, %s\n",
				tr.GeneratorSent, tr.SinkReceived, tr.GeneratorSent-min(tr.SinkReceived, tr.GeneratorSent), tr.SinkBad, latencies(tr))
		}
		if tr.TAPFromKernel+tr.TAPToKernel > 0 {
			fmt.Fprintln(out, tapLine(tr))
		}
		if tr.BuiltinGuest {
			fmt.Fprintf(out, "guest: echoed %d of %d, dropped %d\n", tr.GuestTx, tr.GuestRx, tr.GuestDropped)
		}
		if x != nil {
			printSimGuests(out, x)
		}
		fmt.Fprintf(out, "IOMMU faults %d\n", tr.IOMMUFaults)
	}
}

// pollCoreLine is the poll core's figures of the run in one line.
func pollCoreLine(p *simPollCore) string {
	return fmt.Sprintf("poll core: %.3f Mpps through the guest, lcore busy %.0f%%, %.1f ns per frame moved (busy %.3fs over %d frames, both directions)",
		p.MppsThroughGuest, p.LcoreBusyPct, p.NsPerPacket, p.PMDBusySeconds, p.PMDPackets)
}

// latencies is the round-trip latency from the generator's stamp to the
// sink: percentiles (within 1/16 of the value, from the sink's
// log-linear histogram) and the exact maximum.
func latencies(tr *appliance.TrafficCounters) string {
	return fmt.Sprintf("latency p50 %.0fus p99 %.0fus p99.9 %.0fus max %.0fus", tr.LatencyP50Us, tr.LatencyP99Us, tr.LatencyP999Us, tr.LatencyMaxUs)
}

// printSimGuests prints the per-guest table and the broadcast accounting.
func printSimGuests(out io.Writer, x *simExtra) {
	if b := x.Broadcast; b != nil {
		fmt.Fprintf(out, "broadcast: sent %d, copies received %d of %d (one per guest), echoes dropped by the NIC as spoofed %d (their source is the broadcast address), echoes on the wire %d\n",
			b.Sent, b.CopiesReceived, b.CopiesExpected, b.EchoesSpoofed, b.EchoesOnWire)
	}
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "guest\tMAC\taddressed to it\treceived\tbroadcasts\techoed\tdropped\tmisdelivered\t")
	for i, g := range x.Guests {
		mac, mis := g.MAC, fmt.Sprint(g.Misdelivered)
		if mac == "" {
			mac = "-"
		}
		if !g.Checked {
			mis = "unchecked"
		}
		fmt.Fprintf(w, "%d\t%s\t%d\t%d\t%d\t%d\t%d\t%s\t\n", i, mac, g.Sent, g.Received, g.Broadcasts, g.Echoed, g.Dropped, mis)
	}
	w.Flush()
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
