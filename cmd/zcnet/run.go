package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os/signal"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/zcnet/zcnet/fwd"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim/rig"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
)

// runOptions are the flags of `zcnet run`, named as testpmd and OVS-DPDK
// operators know them.
type runOptions struct {
	pci       []string
	simulate  bool
	lcores    string
	rxRing    int
	txRing    int
	mtu       int
	burst     int
	poolBufs  int
	duration  time.Duration
	interval  time.Duration
	rate      float64
	frameSize int
	flows     int

	vhostOpts vhostOptions
}

func newRunCommand(a *app) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "run",
		Short: "Run the data path: NIC ports joined zero-copy to vhost-user guests",
		Long: `run drives NIC ports with pinned poll cores until SIGINT or SIGTERM, joining
each --pci port to vhost-user guests (--vhost socket paths; zcnet listens
unless --vhost-client): every guest queue pair gets a NIC queue pair of its
own (--rxq/--txq per guest), and the NIC DMAs straight into and out of the
guest's buffers. Several ports are easier to describe in a --config file
(YAML or JSON), which SIGHUP or zcnet reload re-reads; guests are added and
removed at runtime with zcnet port over the --control socket. On
SIGINT/SIGTERM it stops the lcores, stops and drains the NIC queues, unmaps
guest memory and closes the sockets, in that order.

With --sim the NIC ports are simulated 82599s (their wires unconnected):
the control plane and configuration can be tried without a NIC.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			open := a.open
			if o.simulate {
				open = (&rig.Ports{Unwired: true}).Open
			}
			return runVhost(ctx, a.log, open, o, func(n string) bool { return cmd.Flags().Changed(n) }, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.pci, "pci", nil, "PCI address of an 82599 port bound to vfio-pci: its PF, or an SR-IOV VF (one guest per VF); repeat for each port")
	f.BoolVar(&o.simulate, "sim", false, "the --pci ports are simulated 82599s with unconnected wires (no NIC needed)")
	o.commonFlags(f)
	v := &o.vhostOpts
	f.StringArrayVar(&v.vhost, "vhost", nil, "vhost-user socket path of a guest port, optionally with the guest's MAC as PATH,mac=52:54:00:12:34:56 (without it the port learns the MAC from the guest's frames; a configured MAC is fixed unless ,trusted=on), ,migration=off to keep QEMU from live-migrating the guest (on by default: dirty logging, SEND_RARP) and the socket's mode and group as PATH,mode=0660,group=kvm (default 0600, zcnet's own group); repeat for each guest")
	f.BoolVar(&v.noPacked, "no-packed", false, "do not offer packed virtqueues (VIRTIO_F_RING_PACKED) to the guests; IN_ORDER is never offered, as the zero-copy engine completes RX buffers out of order")
	f.BoolVar(&v.client, "vhost-client", false, "connect to the --vhost sockets (QEMU server=on) and reconnect when the front end goes away")
	f.IntVar(&v.rxq, "rxq", 1, "RX queues (queue pairs) per vhost port")
	f.IntVar(&v.txq, "txq", 1, "TX queues per vhost port (equal to --rxq)")
	f.StringVar(&v.memLimit, "vhost-mem-limit", "", memLimitHelp)
	f.IntVar(&v.copyBreak, "copy-break", 0, "copy frames up to this size instead of zero-copy (0: never; the engine copies all frames or none)")
	f.BoolVar(&v.copyAll, "copy", false, "copy every frame through host buffers")
	f.StringVar(&v.config, "config", "", "YAML or JSON file describing the ports (instead of --pci/--vhost/... flags); SIGHUP or `zcnet reload` re-reads it and applies the difference to the guests")
	f.StringVar(&v.control, "control", defaultControlPath(), "control socket for `zcnet port` and `zcnet reload` (\"\" for none)")
	f.StringVar(&v.controlMode, "control-mode", "", "mode of the control socket (default 0600: whoever can connect adds and removes guests)")
	f.StringVar(&v.controlGroup, "control-group", "", "group of the control socket")
	f.StringVar(&v.telemetry, "telemetry", defaultTelemetryPath(), "telemetry socket for `zcnet stats` (\"\" for none)")
	f.StringVar(&v.metricsAddr, "metrics-addr", "", "serve Prometheus /metrics on this address (e.g. 127.0.0.1:9464)")
	return cmd
}

// newFwdCommand is `zcnet fwd`: the two-port forwarder.
func newFwdCommand(a *app) *cobra.Command {
	o := &runOptions{}
	cmd := &cobra.Command{
		Use:   "fwd",
		Short: "Forward between two NIC ports without copying (testpmd io mode)",
		Long: `fwd forwards every frame received on one of two --pci ports out of the
other, in both directions, like ixy-fwd or testpmd's io mode: the receive
buffer itself is transmitted, so nothing is copied. It runs until SIGINT or
SIGTERM (or --duration). With --sim the two ports are simulated 82599s joined
by a traffic generator (on port 0's wire) and a verifying sink (on port 1's
wire), and the run reports loss.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return runForward(ctx, a.log, o, cmd.OutOrStdout())
		},
	}
	f := cmd.Flags()
	f.StringArrayVar(&o.pci, "pci", nil, "PCI address of an 82599 port (its PF, bound to vfio-pci); give two")
	f.BoolVar(&o.simulate, "sim", false, "use two simulated 82599 ports with a generator and a sink instead of --pci")
	o.commonFlags(f)
	f.IntVar(&o.poolBufs, "pool", 4096, "2 KiB buffers per direction")
	f.Float64Var(&o.rate, "rate", 100000, "--sim: generator rate in frames per second")
	f.IntVar(&o.frameSize, "frame-size", 64, "--sim: frame size on the wire, FCS included")
	f.IntVar(&o.flows, "flows", 1, "--sim: number of UDP flows")
	return cmd
}

// commonFlags are the flags run and fwd share.
func (o *runOptions) commonFlags(f *pflag.FlagSet) {
	f.StringVarP(&o.lcores, "lcores", "l", "", "poll cores, DPDK -l syntax (e.g. 2-3); default: the last allowed CPU")
	f.IntVar(&o.rxRing, "rxd", 1024, "RX descriptors per queue")
	f.IntVar(&o.txRing, "txd", 1024, "TX descriptors per queue")
	f.IntVar(&o.mtu, "mtu", 1500, "MTU of the ports")
	f.IntVar(&o.burst, "burst", 32, "frames per poll")
	f.DurationVar(&o.duration, "duration", 0, "stop after this long (0: until SIGINT/SIGTERM)")
	f.DurationVar(&o.interval, "stats-period", time.Second, "print statistics this often (0: only at the end)")
}

func runForward(ctx context.Context, log *zap.Logger, o *runOptions, out io.Writer) error {
	if o.simulate == (len(o.pci) > 0) {
		return errors.New("give either exactly two --pci ports or --sim")
	}
	if !o.simulate && len(o.pci) != 2 {
		return fmt.Errorf("the forwarder needs exactly two --pci ports, got %d", len(o.pci))
	}
	cpus, err := pollmode.PollCPUs(o.lcores)
	if err != nil {
		return err
	}
	cfg := fwd.PairConfig{RxRing: o.rxRing, TxRing: o.txRing, MTU: o.mtu, Burst: o.burst, PoolBufs: o.poolBufs, CPUs: cpus}
	var devs [2]vfio.Device
	var sims *rig.Ports // --sim: a generator on port 0's wire, a sink on port 1's
	if o.simulate {
		sims = &rig.Ports{}
		for i := range devs {
			cfg.Names[i] = fmt.Sprintf("port%d", i)
			devs[i], _ = sims.Open(fmt.Sprintf("sim:%d", i))
		}
	} else {
		for i, addr := range o.pci {
			if devs[i], err = vfio.Open(addr); err != nil {
				if i == 1 {
					devs[0].Close()
				}
				return err
			}
			cfg.Names[i] = addr
		}
	}
	pair, err := fwd.OpenPair(devs[0], devs[1], cfg)
	if err != nil {
		return err
	}
	defer func() {
		if err := pair.Close(); err != nil {
			log.Warn("close the forwarder", zap.Error(err))
		}
	}()
	var gen *wire.Generator
	var sink *wire.Sink
	if sims != nil {
		sink = sims.Sink("sim:1")
		if gen, err = sims.Port("sim:0").Generator(wire.GeneratorConfig{FrameSize: o.frameSize, Flows: o.flows, Rate: o.rate}); err != nil {
			return err
		}
	}
	if err := pair.Start(ctx); err != nil {
		return err
	}
	_, nameA := pair.Port(0)
	_, nameB := pair.Port(1)
	log.Info("forwarding", zap.String("a", nameA), zap.String("b", nameB), zap.Ints("cpus", cpus))
	if gen != nil {
		time.Sleep(20 * time.Millisecond) // let the forwarders fill the RX rings
		if err := gen.Start(); err != nil {
			return err
		}
	}

	runCtx, tick, endWindow := runWindow(ctx, o.duration, o.interval)
	defer endWindow()
	start := time.Now()
	var last [2]fwd.Stats
	lastAt := start
	fwds := pair.Forwarders()
loop:
	for {
		select {
		case <-runCtx.Done():
			break loop
		case err := <-pair.Failed():
			if gen != nil {
				gen.Stop()
			}
			_ = pair.Stop() // returns err again
			return logLcoreDeath(log, err)
		case now := <-tick:
			secs := now.Sub(lastAt).Seconds()
			for i, f := range fwds {
				s := f.Stats()
				fmt.Fprintf(out, "%-24s rx %10d  tx %10d  %8.3f Mpps  txfull %d\n",
					f.Name(), s.RxFrames, s.TxFrames, float64(s.TxFrames-last[i].TxFrames)/secs/1e6, s.TxFull)
				last[i] = s
			}
			lastAt = now
		}
	}
	if gen != nil {
		gen.Stop()
		rig.Drain(sink, gen.Sent())
	}
	if err := pair.Stop(); err != nil {
		return err
	}
	elapsed := time.Since(start).Seconds()
	for _, f := range fwds {
		s := f.Stats()
		fmt.Fprintf(out, "total %-18s rx %d tx %d (%.3f Mpps average)\n", f.Name(), s.RxFrames, s.TxFrames, float64(s.TxFrames)/elapsed/1e6)
	}
	for i := range 2 {
		port, name := pair.Port(i)
		st := port.Stats()
		fmt.Fprintf(out, "%-24s NIC rx %d tx %d, dropped: packet buffer full %d, no RX descriptor %d\n",
			name, st.RxPackets, st.TxPackets, st.RxMissed, st.Queues[0].RxDropped)
	}
	if sink != nil {
		s := sink.Stats()
		fmt.Fprintf(out, "generator sent %d, sink received %d, lost %d, bad checksums %d, latency p50 %v p99 %v\n",
			gen.Sent(), s.Received, gen.Sent()-s.Received, s.BadIPChecksum+s.BadUDPChecksum, s.Latency.P50, s.Latency.P99)
		// Tear down before reading faults: an unmap under a live DMA
		// would show up only now.
		if err := pair.Close(); err != nil {
			return err
		}
		return sims.Faults()
	}
	return nil
}

// runWindow bounds ctx by duration (0: until ctx ends) and ticks every
// interval (0: never); release frees the timer and the context.
func runWindow(ctx context.Context, duration, interval time.Duration) (context.Context, <-chan time.Time, func()) {
	cancel := context.CancelFunc(func() {})
	if duration > 0 {
		ctx, cancel = context.WithTimeout(ctx, duration)
	}
	if interval <= 0 {
		return ctx, nil, cancel
	}
	t := time.NewTicker(interval)
	return ctx, t.C, func() { t.Stop(); cancel() }
}
