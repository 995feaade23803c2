package rig

import (
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
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
	// Generator, if set, feeds the first port's wire. A zero DstMAC and
	// no DstMACs send to the first guest's configured MAC, else to the
	// port's own; when the first port has several guests with configured
	// MACs, to each of those in turn (DstMACs, in the spec's order).
	Generator *wire.GeneratorConfig
	// Tx, if set, stands between the first port's transmit side and its
	// sink: the port transmits into Tx(sink).
	Tx func(sink wire.Endpoint) wire.Endpoint
	// Guest starts the built-in echo guest (testpmd's macswap) on each
	// of the first NIC port's guest sockets when the rig runs (when that
	// port is a VF, on those of every VF port of its PF too, which the
	// generator then addresses as the first port's). When the
	// port has several guests, each one with a configured MAC checks the
	// destination of every frame it receives against it (a frame for
	// another guest is counted misdelivered, see guest.StartEchoAs).
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
	// Config.Guest): the first guest's.
	Guest *guest.Echo
	// Guests are the built-in echo guests, one per guest of the first
	// NIC port in the spec's order (Guests[0] is Guest).
	Guests []*guest.Echo

	cfg    Config
	genCfg wire.GeneratorConfig
	// dstGuest is, for each of the generator's destinations, the index
	// of the guest it is (-1: none of them).
	dstGuest  []int
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
		if err := r.openGenerator(*cfg.Generator); err != nil {
			return nil, err
		}
	}
	return r, nil
}

// openGenerator fills in the generator's destinations and opens it on
// the first port.
func (r *Rig) openGenerator(c wire.GeneratorConfig) error {
	r.genCfg = c
	r.dstGuest = []int{-1}
	if c.DstMAC == (wire.MAC{}) && len(c.DstMACs) == 0 {
		// The generator is the guests' peer on the wire.
		r.genCfg.DstMAC = wire.MAC(r.Port.MAC)
		macs, guests, err := r.configuredMACs()
		if err != nil {
			return err
		}
		switch {
		case len(macs) > 1:
			r.genCfg.DstMACs, r.dstGuest = macs, guests
		case len(macs) == 1 && guests[0] == 0:
			r.genCfg.DstMAC, r.dstGuest = macs[0], []int{0}
		case len(r.wireGuests()) == 1:
			r.dstGuest = []int{0} // the port's MAC: the only guest gets it
		}
	}
	var err error
	r.Gen, err = wire.NewGenerator(r.genCfg, r.Port.PF)
	return err
}

// configuredMACs are the configured MACs of the first port's guests and
// the index of each guest in the spec.
func (r *Rig) configuredMACs() (macs []wire.MAC, guests []int, err error) {
	info := map[string]appliance.GuestInfo{}
	for _, g := range r.App.Guests() {
		info[g.Socket] = g
	}
	for i, gs := range r.wireGuests() {
		g, ok := info[gs.Socket]
		if !ok || g.MACSource != "configured" {
			continue
		}
		m, err := net.ParseMAC(g.MAC)
		if err != nil {
			return nil, nil, err
		}
		macs, guests = append(macs, wire.MAC(m)), append(guests, i)
	}
	return macs, guests, nil
}

// wireGuests are the guests on the first NIC port's wire, in the spec's
// order: the first port's, and when it is a VF (PF+"/vfN"), those of
// every other NIC port on a VF of the same PF too (one guest per VF, the
// usual SR-IOV deployment, fed by the one generator).
func (r *Rig) wireGuests() []appliance.GuestSpec {
	nics := r.cfg.Spec.NICs
	gs := nics[0].Guests
	pf, _, ok := SplitVF(nics[0].PCI)
	if !ok {
		return gs
	}
	gs = slices.Clone(gs)
	for _, n := range nics[1:] {
		if p, _, ok := SplitVF(n.PCI); ok && p == pf {
			gs = append(gs, n.Guests...)
		}
	}
	return gs
}

// Socket is the first guest's vhost-user socket path ("" if the spec has
// none).
func (r *Rig) Socket() string {
	if g := r.cfg.Spec.NICs[0].Guests; len(g) > 0 {
		return g[0].Socket
	}
	return ""
}

// startGuests starts the built-in echo guests on the first port's guest
// sockets.
func (r *Rig) startGuests() error {
	specs := r.wireGuests()
	for _, gs := range specs {
		var e *guest.Echo
		var err error
		m, perr := net.ParseMAC(gs.MAC)
		if len(specs) > 1 && perr == nil && len(m) == 6 {
			e, err = guest.StartEchoAs(gs.Socket, [6]byte(m))
		} else {
			e, err = guest.StartEcho(gs.Socket)
		}
		if err != nil {
			return err
		}
		r.Guests = append(r.Guests, e)
	}
	if len(r.Guests) > 0 {
		r.Guest = r.Guests[0]
	}
	return nil
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
	if err := r.startGuests(); err != nil {
		return err
	}
	r.WaitGuestReady(2 * time.Second)
	return nil
}

// WaitGuestReady waits (up to timeout) until the first guest's memory is
// mapped and its receive ring started (with several built-in guests,
// every one's), then a few polls more, so that the port has posted its
// buffers and the first frames are not dropped for want of them.
func (r *Rig) WaitGuestReady(timeout time.Duration) {
	want := map[string]bool{}
	if len(r.Guests) > 1 {
		for _, gs := range r.wireGuests() {
			want[gs.Socket] = true
		}
	}
	// A guest is ready once the NIC holds its buffers: more than a burst
	// on every one of its NIC queues (the engine keeps at most a burst of
	// host buffers there while the guest has posted none). Frames that
	// arrive earlier are dropped by the NIC, so a demo or test that
	// started traffic at "session up" would count losses that are only
	// its own start-up.
	posted := func(socket string) bool {
		s, err := r.App.Session(socket)
		if err != nil || len(s.Channels) == 0 {
			return false
		}
		for _, c := range s.Channels {
			if c.RxPosted <= readyBurst {
				return false
			}
		}
		return true
	}
	ready := func() bool {
		g := r.App.Guests()
		if len(want) == 0 {
			return len(g) > 0 && g[0].Ready && posted(g[0].Socket)
		}
		n := 0
		for _, gi := range g {
			if want[gi.Socket] && gi.Ready && posted(gi.Socket) {
				n++
			}
		}
		return n == len(want)
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(5 * time.Millisecond) {
		if ready() {
			break
		}
	}
}

// readyBurst is the engine's default burst: the most host buffers it
// keeps on a NIC queue while the guest has posted none.
const readyBurst = 32

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
// them, or none more for 200 ms. With several built-in guests or
// broadcasts it also waits for every guest to have received its frames
// and for every echo to be accounted for (at the sink, or dropped by the
// NIC as spoofed), or again for 200 ms without progress.
func (r *Rig) Drain() {
	if r.Gen == nil || r.Port.Sink == nil {
		return
	}
	if len(r.Guests) <= 1 && r.Gen.Broadcasts() == 0 {
		Drain(r.Port.Sink, r.Gen.Sent())
		return
	}
	settled := func() (done bool, progress uint64) {
		st := r.Port.Sink.Stats()
		spoofed := r.Port.PF.Counters().TxSpoofed
		done = st.Received >= r.Gen.Probes()
		var echoed uint64
		for _, g := range r.GuestTraffic() {
			done = done && g.Received >= g.Sent+r.Gen.Broadcasts()
			echoed += g.Echoed
			progress += g.Received
		}
		done = done && st.Frames+spoofed >= echoed
		return done, progress + st.Frames + spoofed
	}
	_, last := settled()
	for still := 0; still < 20; {
		time.Sleep(10 * time.Millisecond)
		done, now := settled()
		if done {
			return
		}
		if now == last {
			still++
		} else {
			last, still = now, 0
		}
	}
}

// GuestTraffic is one built-in echo guest's counters.
type GuestTraffic struct {
	Socket string `json:"socket"`
	// MAC is the guest's configured MAC ("" if it has none).
	MAC string `json:"mac,omitempty"`
	// Sent is how many unicast frames the generator addressed to the
	// guest (0 without a generator).
	Sent uint64 `json:"generator_sent"`
	// Received counts every frame the guest received, its Broadcasts
	// and Misdelivered included; Echoed what it sent back.
	Received   uint64 `json:"received"`
	Broadcasts uint64 `json:"broadcasts_received"`
	Echoed     uint64 `json:"echoed"`
	Dropped    uint64 `json:"dropped"`
	// Misdelivered counts unicast frames for another address: frames the
	// NIC steered to the wrong guest. Only a guest with a configured MAC
	// on a port with several guests checks (see Config.Guest).
	Misdelivered uint64 `json:"misdelivered"`
	// Checked says the guest checked destinations against MAC.
	Checked bool `json:"checked_destination"`
}

// GuestTraffic is the built-in guests' counters, one per guest of the
// first NIC port in the spec's order (nil without Config.Guest).
func (r *Rig) GuestTraffic() []GuestTraffic {
	if len(r.Guests) == 0 {
		return nil
	}
	var sentTo []uint64
	if r.Gen != nil {
		sentTo = r.Gen.SentTo()
	}
	out := make([]GuestTraffic, len(r.Guests))
	for i, e := range r.Guests {
		gs := r.wireGuests()[i]
		_, checked := e.MAC()
		out[i] = GuestTraffic{Socket: gs.Socket, MAC: gs.MAC, Received: e.Received(), Broadcasts: e.Broadcasts(),
			Echoed: e.Sent(), Dropped: e.Dropped(), Misdelivered: e.Misdelivered(), Checked: checked}
	}
	for d, i := range r.dstGuest {
		if i >= 0 && i < len(out) && d < len(sentTo) {
			out[i].Sent = sentTo[d]
		}
	}
	return out
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
// built-in guests (summed) and the first port's model counters.
func (r *Rig) Traffic() *appliance.TrafficCounters {
	t := &appliance.TrafficCounters{}
	if r.Gen != nil {
		t.GeneratorSent = r.Gen.Sent()
		st := r.Port.Sink.Stats()
		t.SinkReceived, t.SinkLost = st.Received, st.Lost
		t.SinkBad = st.BadIPChecksum + st.BadUDPChecksum
		t.LatencyP50Us = float64(st.Latency.P50) / 1e3
		t.LatencyP99Us = float64(st.Latency.P99) / 1e3
		t.LatencyP999Us = float64(st.Latency.P999) / 1e3
		t.LatencyMaxUs = float64(st.Latency.Max) / 1e3
	}
	if r.TAP != nil {
		ts := r.TAP.Stats()
		t.TAPFromKernel, t.TAPToKernel = ts.RxFrames, ts.TxFrames
		t.TAPPadded, t.TAPReadErrors, t.TAPWriteErrors = ts.RxPadded, ts.RxErrors, ts.TxErrors
	}
	for _, g := range r.Guests {
		t.BuiltinGuest = true
		t.GuestRx += g.Received()
		t.GuestTx += g.Sent()
		t.GuestDropped += g.Dropped()
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
		for _, g := range r.Guests {
			errs = append(errs, g.Close())
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
