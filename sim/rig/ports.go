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
	"strconv"
	"strings"
	"sync"

	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/linuxpf"
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

// VFMAC is the MAC the host's administrator assigns to the simulated VF
// at addr (ip link set PF vf N mac ...): locally administered, its last
// three bytes hashed from the VF's address.
func VFMAC(addr string) [6]byte {
	m := PortMAC(addr)
	m[0], m[1], m[2] = 0x02, 0x09, 0xc0
	return m
}

// Port is one simulated 82599 of a Ports set, or one of its SR-IOV
// virtual functions.
type Port struct {
	PF *sim.PF
	// Sink is where the port's wire ends (nil for an unwired port); a
	// VF's is its PF's.
	Sink *wire.Sink
	// MAC is the port's permanent address (PortMAC of its address), or a
	// VF's the one the host assigned it (VFMAC of its address).
	MAC [6]byte
	// VF is the virtual function a VF address opened (nil for a PF), VFs
	// its index (meaningful with VF only).
	VF      *sim.VF
	VFIndex int
	// Host is the host's Linux PF driver keeping PF when VFs are opened
	// on it (nil otherwise).
	Host *linuxpf.Host
}

// SplitVF splits a VF address, PF+"/vf"+N, into the PF's address and N;
// ok is false for any other address.
func SplitVF(addr string) (pf string, vf int, ok bool) {
	i := strings.LastIndex(addr, "/vf")
	if i <= 0 {
		return "", 0, false
	}
	n, err := strconv.Atoi(addr[i+3:])
	if err != nil || n < 0 {
		return "", 0, false
	}
	return addr[:i], n, true
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
//
// An address PF+"/vf"+N ("sim:0000:01:00.0/vf0") opens virtual function
// N of the simulated 82599 at PF, as SR-IOV is usually deployed: the
// host's Linux driver keeps the PF (sim/linuxpf, running until Stop),
// with Ports.VFs virtual functions enabled, and its administrator has given
// the VF the address VFMAC(addr). The PF is opened with the first of its
// VFs; it cannot also be opened as a port of its own.
type Ports struct {
	// Unwired leaves the ports' wires unconnected: what they transmit is
	// counted as sent without link (zcnet run --sim).
	Unwired bool
	// VFs is how many virtual functions a PF opened for a VF address has
	// (default 8, at most 63).
	VFs int

	mu    sync.Mutex
	ports map[string]*Port
}

// Open opens a new simulated 82599 at addr and starts it. A port opened
// at the same address again replaces the earlier one in the set.
func (s *Ports) Open(addr string) (vfio.Device, error) {
	if pfAddr, vf, ok := SplitVF(addr); ok {
		return s.openVF(addr, pfAddr, vf)
	}
	if p := s.Port(addr); p != nil && p.Host != nil {
		return nil, fmt.Errorf("rig: %s has its VFs open: the host's driver keeps it", addr)
	}
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

// openVF opens VF vf of the PF at pfAddr, bringing the PF up under the
// host's driver first if none of its VFs is open yet.
func (s *Ports) openVF(addr, pfAddr string, vf int) (vfio.Device, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	pf := s.ports[pfAddr]
	if pf != nil && pf.Host == nil {
		return nil, fmt.Errorf("rig: %s is open as a port of its own: its VFs need the host's driver on it", pfAddr)
	}
	if pf == nil {
		n := s.VFs
		if n == 0 {
			n = 8
		}
		o := sim.DefaultOptions()
		o.Address = pfAddr
		o.MAC = PortMAC(pfAddr)
		pf = &Port{PF: sim.NewPF(o), MAC: o.MAC, VFIndex: -1}
		h, err := linuxpf.Start(pf.PF, linuxpf.Config{NumVFs: n})
		if err != nil {
			return nil, fmt.Errorf("rig: the host's PF driver on %s: %w", pfAddr, err)
		}
		pf.Host = h
		if !s.Unwired {
			pf.Sink = wire.NewSink(nil)
			pf.PF.Attach(pf.Sink)
		}
		h.Run()
		pf.PF.Start()
		if s.ports == nil {
			s.ports = map[string]*Port{}
		}
		s.ports[pfAddr] = pf
	}
	if vf >= pf.PF.NumVFs() {
		return nil, fmt.Errorf("rig: %s: the PF has %d VFs", addr, pf.PF.NumVFs())
	}
	mac := VFMAC(addr)
	if err := pf.Host.SetVFMAC(vf, mac); err != nil {
		return nil, fmt.Errorf("rig: %s: the host's MAC for the VF: %w", addr, err)
	}
	p := &Port{PF: pf.PF, Sink: pf.Sink, MAC: mac, VF: pf.PF.VF(vf), VFIndex: vf, Host: pf.Host}
	s.ports[addr] = p
	return p.VF, nil
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
		if p.Host != nil {
			p.Host.Stop()
		}
		p.PF.Stop()
	}
}

// Faults says which ports counted IOMMU faults (DMA outside the memory
// mapped for the NIC), or nil if none did.
func (s *Ports) Faults() error {
	var errs []error
	for _, p := range s.all() {
		if p.VF != nil {
			if n, last := p.VF.IOMMU().Faults(); n != 0 {
				errs = append(errs, fmt.Errorf("simulated VF %s counted %d IOMMU faults in its domain (last at IOVA %#x): DMA outside the memory mapped for it",
					p.VF.Address(), n, last))
			}
			continue
		}
		if c := p.PF.Counters(); c.IOMMUFaults != 0 {
			errs = append(errs, fmt.Errorf("simulated port %s counted %d IOMMU faults (last at IOVA %#x): DMA outside the mapped memory",
				p.PF.Address(), c.IOMMUFaults, c.LastFaultIOVA))
		}
	}
	return errors.Join(errs...)
}
