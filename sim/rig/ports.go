// Package rig is a test bench of simulated 82599s running the appliance,
// as net/http/httptest is one of HTTP servers: simulated NIC ports opened
// by PCI address (an appliance.Opener), the appliance assembled on them
// from an appliance.Spec and torn down by appliance.Shutdown (the rig
// writes no teardown order of its own), a traffic generator and a
// verifying sink (or a TAP) on the first port's wire, and optionally the
// built-in echo guest (sim/guest) on its first guest socket.
//
// It is imported only by tests and by cmd/zcnet (zcnet sim, zcnet bench,
// zcnet run --sim); no production package imports it.
package rig

import (
	"errors"
	"fmt"
	"hash/fnv"
	"sort"
	"sync"

	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vfio"
)

// PortMAC is the permanent MAC of the simulated port at addr: the
// simulator's default with its last three bytes hashed from the address,
// so that each port has its own, as each port of a real NIC does.
func PortMAC(addr string) [6]byte {
	m := sim.DefaultOptions().MAC
	h := fnv.New32a()
	h.Write([]byte(addr))
	sum := h.Sum32()
	m[3], m[4], m[5] = byte(sum>>16), byte(sum>>8), byte(sum)
	return m
}

// Port is one simulated 82599 of a Ports set.
type Port struct {
	PF *sim.PF
	// Sink is where the port's wire ends (nil for an unwired port).
	Sink *wire.Sink
	// MAC is the port's permanent address (PortMAC of its address).
	MAC [6]byte
}

// Generator returns a generator sending into the port; frames go to the
// port's own MAC unless cfg names another destination.
func (p *Port) Generator(cfg wire.GeneratorConfig) (*wire.Generator, error) {
	if cfg.DstMAC == (wire.MAC{}) {
		cfg.DstMAC = wire.MAC(p.MAC)
	}
	return wire.NewGenerator(cfg, p.PF)
}

// Ports is a set of simulated 82599s keyed by PCI address. Its Open
// method is an appliance.Opener: each address opens a new started
// simulated port whose wire ends in a verifying sink (none if Unwired).
// The zero value is ready to use.
type Ports struct {
	// Unwired leaves the ports' wires unconnected: what they transmit is
	// counted as sent without link (zcnet run --sim).
	Unwired bool

	mu    sync.Mutex
	ports map[string]*Port
}

// Open opens a new simulated 82599 at addr and starts it. A port opened
// at the same address again replaces the earlier one in the set.
func (s *Ports) Open(addr string) (vfio.Device, error) {
	o := sim.DefaultOptions()
	o.Address = addr
	o.MAC = PortMAC(addr)
	p := &Port{PF: sim.NewPF(o), MAC: o.MAC}
	if !s.Unwired {
		p.Sink = wire.NewSink(nil)
		p.PF.Attach(p.Sink)
	}
	p.PF.Start()
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.ports == nil {
		s.ports = map[string]*Port{}
	}
	s.ports[addr] = p
	return p.PF, nil
}

// Port is the port opened at addr, or nil.
func (s *Ports) Port(addr string) *Port {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.ports[addr]
}

// PF is the simulated 82599 opened at addr, or nil.
func (s *Ports) PF(addr string) *sim.PF {
	if p := s.Port(addr); p != nil {
		return p.PF
	}
	return nil
}

// Sink is the sink on the wire of the port opened at addr, or nil.
func (s *Ports) Sink(addr string) *wire.Sink {
	if p := s.Port(addr); p != nil {
		return p.Sink
	}
	return nil
}

// all is every port, by address.
func (s *Ports) all() []*Port {
	s.mu.Lock()
	defer s.mu.Unlock()
	addrs := make([]string, 0, len(s.ports))
	for a := range s.ports {
		addrs = append(addrs, a)
	}
	sort.Strings(addrs)
	out := make([]*Port, len(addrs))
	for i, a := range addrs {
		out[i] = s.ports[a]
	}
	return out
}

// Stop stops every port's engines (the appliance closing a port stops it
// too). Call it before Faults to be sure nothing DMAs any more.
func (s *Ports) Stop() {
	for _, p := range s.all() {
		p.PF.Stop()
	}
}

// Faults says which ports counted IOMMU faults (DMA outside the memory
// mapped for the NIC), or nil if none did.
func (s *Ports) Faults() error {
	var errs []error
	for _, p := range s.all() {
		if c := p.PF.Counters(); c.IOMMUFaults != 0 {
			errs = append(errs, fmt.Errorf("simulated port %s counted %d IOMMU faults (last at IOVA %#x): DMA outside the mapped memory",
				p.PF.Address(), c.IOMMUFaults, c.LastFaultIOVA))
		}
	}
	return errors.Join(errs...)
}
