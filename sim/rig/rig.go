package rig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
)

// Config is what a Rig is assembled from.
type Config struct {
	// Spec is the appliance; its NIC ports are opened on the rig's
	// simulated ports. The wire side and the built-in guest are on the
	// first NIC port and its first guest.
	Spec    appliance.Spec
	Options []appliance.Option
	// TAP connects the first port's wire to a Linux TAP interface of
	// this name, both ways, instead of a generator and a sink.
	TAP string
	// Generator, if set, feeds the first port's wire. A zero DstMAC
	// sends to the first guest's configured MAC, else to the port's own.
	Generator *wire.GeneratorConfig
	// Tx, if set, stands between the first port's transmit side and its
	// sink: the port transmits into Tx(sink).
	Tx func(sink wire.Endpoint) wire.Endpoint
	// Guest starts the built-in echo guest (testpmd's macswap) on the
	// first guest's socket when the rig runs.
	Guest bool
}

// Rig is an appliance running on simulated 82599s with a wire side.
type Rig struct {
	App   *appliance.Appliance
	Ports *Ports
	// Port is the first NIC port: the one the generator, sink or TAP and
	// the built-in guest are on.
	Port *Port
	// Gen is the generator (nil without Config.Generator); it is not
	// started: the caller starts and stops it.
	Gen *wire.Generator
	// TAP is the first port's TAP (nil without Config.TAP).
	TAP *wire.TAP
	// Guest is the built-in echo guest once the rig runs (nil without
	// Config.Guest).
	Guest *guest.Echo

	cfg       Config
	genCfg    wire.GeneratorConfig
	closeOnce sync.Once
	closeErr  error
}

// Open opens the appliance of cfg.Spec on new simulated ports and wires
// the first one. Nothing polls until Run. On error what was opened is
// shut down again.
func Open(cfg Config) (_ *Rig, err error) {
	if len(cfg.Spec.NICs) == 0 {
		return nil, errors.New("rig: the spec has no NIC port")
	}
	r := &Rig{cfg: cfg, Ports: &Ports{Unwired: cfg.TAP != ""}}
	r.App, err = appliance.Open(cfg.Spec, r.Ports.Open, cfg.Options...)
	if err != nil {
		r.Ports.Stop()
		return nil, err
	}
	defer func() {
		if err != nil {
			err = errors.Join(err, r.Close())
		}
	}()
	r.Port = r.Ports.Port(cfg.Spec.NICs[0].PCI)
	pf := r.Port.PF
	if cfg.TAP != "" {
		if r.TAP, err = wire.OpenTAP(cfg.TAP); err != nil {
			return nil, fmt.Errorf("--tap %s: %w", cfg.TAP, err)
		}
		pf.Attach(r.TAP)
		r.TAP.Attach(pf)
		return r, nil
	}
	if cfg.Tx != nil {
		pf.Attach(cfg.Tx(r.Port.Sink))
	}
	if cfg.Generator != nil {
		r.genCfg = *cfg.Generator
		if r.genCfg.DstMAC == (wire.MAC{}) {
			// The generator is the guest's peer on the wire.
			r.genCfg.DstMAC = wire.MAC(r.Port.MAC)
			if g := r.App.Guests(); len(g) > 0 && g[0].MACSource == "configured" {
				m, err := net.ParseMAC(g[0].MAC)
				if err != nil {
					return nil, err
				}
				r.genCfg.DstMAC = wire.MAC(m)
			}
		}
		if r.Gen, err = wire.NewGenerator(r.genCfg, pf); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// Socket is the first guest's vhost-user socket path ("" if the spec has
// none).
func (r *Rig) Socket() string {
	if g := r.cfg.Spec.NICs[0].Guests; len(g) > 0 {
		return g[0].Socket
	}
	return ""
}

// Run runs the appliance (until Shutdown: ctx ending stops the lcores
// too) and, with Config.Guest, connects the built-in guest and waits
// until its receive buffers are on the NIC.
func (r *Rig) Run(ctx context.Context) error {
	if err := r.App.Run(ctx); err != nil {
		return err
	}
	if !r.cfg.Guest {
		return nil
	}
	g, err := guest.StartEcho(r.Socket())
	if err != nil {
		return err
	}
	r.Guest = g
	r.WaitGuestReady(2 * time.Second)
	return nil
}

// WaitGuestReady waits (up to timeout) until the first guest's memory is
// mapped and its receive ring started, then a few polls more, so that the
// port has posted its buffers and the first frames are not dropped for
// want of them.
func (r *Rig) WaitGuestReady(timeout time.Duration) {
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if g := r.App.Guests(); len(g) > 0 && g[0].Ready {
			break
		}
	}
	time.Sleep(20 * time.Millisecond)
}

// Regenerate replaces the generator by a fresh, stopped one sending the
// same frames at rate, and resets the sink: one trial of a rate search.
// Not while Snapshot may run concurrently.
func (r *Rig) Regenerate(rate float64) (*wire.Generator, error) {
	c := r.genCfg
	c.Rate = rate
	g, err := wire.NewGenerator(c, r.Port.PF)
	if err != nil {
		return nil, err
	}
	r.Port.Sink.Reset()
	r.Gen = g
	return g, nil
}

// Drain waits until the frames the generator sent reach the sink: all of
// them, or none more for 200 ms.
func (r *Rig) Drain() {
	if r.Gen != nil && r.Port.Sink != nil {
		Drain(r.Port.Sink, r.Gen.Sent())
	}
}

// Drain waits until sent frames reached sink, or none more arrived for
// 200 ms.
func Drain(sink *wire.Sink, sent uint64) {
	last, still := sink.Stats().Received, 0
	for last < sent && still < 20 {
		time.Sleep(10 * time.Millisecond)
		now := sink.Stats().Received
		if now == last {
			still++
		} else {
			last, still = now, 0
		}
	}
}

// Snapshot is the appliance's snapshot with the simulated wire's
// counters.
func (r *Rig) Snapshot(command string) appliance.Snapshot {
	s := r.App.Snapshot(command)
	s.Traffic = r.Traffic()
	return s
}

// Traffic is the simulated wire's counters: generator, sink, TAP, the
// built-in guest and the first port's model counters.
func (r *Rig) Traffic() *appliance.TrafficCounters {
	t := &appliance.TrafficCounters{}
	if r.Gen != nil {
		t.GeneratorSent = r.Gen.Sent()
		st := r.Port.Sink.Stats()
		t.SinkReceived, t.SinkLost = st.Received, st.Lost
		t.SinkBad = st.BadIPChecksum + st.BadUDPChecksum
		t.LatencyP50Us = float64(st.Latency.P50) / 1e3
		t.LatencyP99Us = float64(st.Latency.P99) / 1e3
	}
	if r.TAP != nil {
		ts := r.TAP.Stats()
		t.TAPFromKernel, t.TAPToKernel = ts.RxFrames, ts.TxFrames
		t.TAPPadded, t.TAPReadErrors, t.TAPWriteErrors = ts.RxPadded, ts.RxErrors, ts.TxErrors
	}
	if r.Guest != nil {
		t.BuiltinGuest = true
		t.GuestRx, t.GuestTx, t.GuestDropped = r.Guest.Received(), r.Guest.Sent(), r.Guest.Dropped()
	}
	c := r.Port.PF.Counters()
	t.IOMMUFaults, t.SimRxFIFOFull, t.SimRxQueueOff, t.SimRxNotReady = c.IOMMUFaults, c.RxFIFOFull, c.RxQueueOff, c.RxNotReady
	t.SimTxNoLink, t.SimTxDMAFaults = c.TxNoLink, c.TxDMAFault
	t.SimTxMalformed, t.SimRxDMAFaults = c.TxMalformed, c.RxDMAFault
	return t
}

// Shutdown stops the data path through appliance.Shutdown, in its one
// safe order. The built-in guest stays connected until then. Safe to call
// more than once.
func (r *Rig) Shutdown() error { return r.App.Shutdown() }

// Close shuts the appliance down, then disconnects the built-in guest,
// closes the TAP and stops the simulated ports; it returns the shutdown's
// error and the ports' IOMMU faults. Safe to call more than once.
func (r *Rig) Close() error {
	r.closeOnce.Do(func() {
		if r.Gen != nil {
			r.Gen.Stop()
		}
		errs := []error{r.Shutdown()}
		if r.Guest != nil {
			errs = append(errs, r.Guest.Close())
		}
		if r.TAP != nil {
			errs = append(errs, r.TAP.Close())
		}
		r.Ports.Stop()
		errs = append(errs, r.Ports.Faults())
		r.closeErr = errors.Join(errs...)
	})
	return r.closeErr
}
