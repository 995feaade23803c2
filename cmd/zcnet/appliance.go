package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/driver"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
	"github.com/zcnet/zcnet/vfio"
	"github.com/zcnet/zcnet/vhost"
)

// applianceSpec is what `zcnet run` and `zcnet sim` assemble: NIC ports,
// the vhost-user ports each serves, and the poll cores. It is what a
// --config file holds, and what the command-line flags are turned into.
type applianceSpec struct {
	Lcores string    `json:"lcores" yaml:"lcores"`
	Burst  int       `json:"burst" yaml:"burst"`
	Ports  []nicSpec `json:"ports" yaml:"ports"`

	// Not in config files: set by the commands.
	pageSize    hugepage.PageSize // descriptor rings and copy buffers; 0: 2 MiB hugepages (tests use 4 KiB pages)
	linkTimeout time.Duration
}

// nicSpec is one NIC port (a PF or VF) and the vhost-user ports joined to
// its queue pairs.
type nicSpec struct {
	PCI string `json:"pci" yaml:"pci"`
	// QueuePairs is how many queue pairs each vhost port gets (--rxq and
	// --txq, which must agree: the engine joins an RX and a TX queue).
	QueuePairs int `json:"queue_pairs" yaml:"queue_pairs"`
	Rxd        int `json:"rxd" yaml:"rxd"`
	Txd        int `json:"txd" yaml:"txd"`
	MTU        int `json:"mtu" yaml:"mtu"`
	// Copy sends every frame through host buffers (--copy, or a
	// --copy-break covering every frame size).
	Copy bool `json:"copy" yaml:"copy"`
	// NoPacked leaves VIRTIO_F_RING_PACKED out of what the guest ports
	// are offered (--no-packed): guests then use split rings.
	NoPacked bool        `json:"no_packed" yaml:"no_packed"`
	Vhost    []vhostSpec `json:"vhost" yaml:"vhost"`
}

// vhostSpec is one vhost-user socket.
type vhostSpec struct {
	Socket string `json:"socket" yaml:"socket"`
	// Client connects to a front end listening on Socket (QEMU
	// server=on) and reconnects when it goes away; otherwise zcnet
	// listens and the front end connects.
	Client bool `json:"client" yaml:"client"`
	// MemLimit caps the guest memory the front end may have zcnet map
	// and DMA-pin ("16G"; --vhost-mem-limit); empty: vhost's default.
	MemLimit string `json:"mem_limit,omitempty" yaml:"mem_limit,omitempty"`
	memLimit uint64 // MemLimit parsed by validate
	// MAC is the guest's MAC (QEMU's -device virtio-net-pci,mac=...),
	// which the NIC's filter accepts from the start and the guest reads
	// from its virtio-net config space. Empty: the port learns the
	// guest's MAC from the source address of its first unicast-sourced
	// frame (ARP, neighbour discovery, DHCP) and follows a change.
	MAC string `json:"mac,omitempty" yaml:"mac,omitempty"`
	// Mode (octal, default 0600) and Group of the socket zcnet creates:
	// whoever can connect is the guest's front end. "0660" with the
	// group QEMU runs in (libvirt: kvm) lets a QEMU running as another
	// user connect. Not for Client, where the front end creates it.
	Mode  string `json:"mode,omitempty" yaml:"mode,omitempty"`
	Group string `json:"group,omitempty" yaml:"group,omitempty"`

	mac  [6]byte             // MAC parsed by validate
	sock vhost.SocketOptions // Mode and Group parsed by validate
}

// Defaults for ring sizes and MTU, as testpmd's.
const (
	defaultRingSize = 1024
	defaultMTU      = 1500
	copyBufSize     = 2048
)

// validate fills in defaults and rejects what cannot be assembled, with an
// error that names the setting to change.
func (s *applianceSpec) validate() error {
	if len(s.Ports) == 0 {
		return errors.New("no NIC port: give --pci (or ports in --config)")
	}
	if s.Burst == 0 {
		s.Burst = 32
	}
	if s.Burst < 1 || s.Burst > 512 {
		return fmt.Errorf("burst %d: use 1 to 512", s.Burst)
	}
	sockets := map[string]bool{}
	for i := range s.Ports {
		p := &s.Ports[i]
		where := fmt.Sprintf("port %d (%s)", i, p.PCI)
		if p.QueuePairs == 0 {
			p.QueuePairs = 1
		}
		if p.Rxd == 0 {
			p.Rxd = defaultRingSize
		}
		if p.Txd == 0 {
			p.Txd = defaultRingSize
		}
		if p.MTU == 0 {
			p.MTU = defaultMTU
		}
		switch {
		case len(p.Vhost) == 0:
			return fmt.Errorf("%s: no vhost-user socket to serve: give --vhost PATH", where)
		case p.QueuePairs < 1 || p.QueuePairs*len(p.Vhost) > 64:
			return fmt.Errorf("%s: %d queue pairs for each of %d vhost ports: the 82599 has 64 queue pairs (use 1 to %d per vhost port)",
				where, p.QueuePairs, len(p.Vhost), 64/len(p.Vhost))
		case !ringSizeOK(p.Rxd):
			return fmt.Errorf("%s: --rxd %d: use a power of two from 64 to 4096", where, p.Rxd)
		case !ringSizeOK(p.Txd):
			return fmt.Errorf("%s: --txd %d: use a power of two from 64 to 4096", where, p.Txd)
		case p.MTU < 68 || p.MTU > 9710:
			return fmt.Errorf("%s: --mtu %d: use 68 to 9710", where, p.MTU)
		}
		for j := range p.Vhost {
			v := &p.Vhost[j]
			if v.Socket == "" {
				return fmt.Errorf("%s: empty vhost-user socket path", where)
			}
			if err := v.parseMemLimit(); err != nil {
				return fmt.Errorf("%s: vhost-user socket %s: %w", where, v.Socket, err)
			}
			if v.MAC != "" {
				m, err := parseGuestMAC(v.MAC)
				if err != nil {
					return fmt.Errorf("%s: vhost-user socket %s: %w", where, v.Socket, err)
				}
				v.mac = m
			}
			if err := v.parseSocketOptions(); err != nil {
				return fmt.Errorf("%s: vhost-user socket %s: %w", where, v.Socket, err)
			}
			if sockets[v.Socket] {
				return fmt.Errorf("vhost-user socket %s is given twice: each guest needs a socket of its own", v.Socket)
			}
			sockets[v.Socket] = true
		}
	}
	return nil
}

func ringSizeOK(n int) bool { return n >= 64 && n <= 4096 && n&(n-1) == 0 }

// parseGuestMAC accepts a guest's MAC as a station address: 6 bytes,
// unicast, not zero (the engine takes zero for "learn it").
func parseGuestMAC(s string) ([6]byte, error) {
	var m [6]byte
	hw, err := net.ParseMAC(s)
	if err != nil || len(hw) != 6 {
		return m, fmt.Errorf("guest MAC %q: give 6 bytes as 52:54:00:12:34:56", s)
	}
	copy(m[:], hw)
	switch {
	case m == [6]byte{}:
		return m, fmt.Errorf("guest MAC %s is all zero: give the guest's own address, or none to learn it from the guest's frames", hw)
	case m[0]&1 != 0:
		return m, fmt.Errorf("guest MAC %s is a multicast address (the first byte is odd): a guest's own address is unicast, e.g. 52:54:00:12:34:56", hw)
	}
	return m, nil
}

// guestOffer is the virtio feature set the appliance's guest ports
// offer: vhost's defaults and packed rings, which the zero-copy engine
// serves as it does split ones. IN_ORDER is never offered: the engine
// completes RX buffers out of avail order (a frame held in a host buffer
// is delivered into a chain popped after chains already on the NIC, and
// the chains of dropped frames are posted again), which IN_ORDER forbids.
func guestOffer(ps nicSpec) uint64 {
	if ps.NoPacked {
		return vhost.DefaultFeatures
	}
	return vhost.DefaultFeatures | vhost.FRingPacked
}

// appliance is the assembled data path: NIC ports, vhost-user devices,
// engine ports and the lcores polling them.
type appliance struct {
	log    *zap.Logger
	nics   []*nicPort
	vhosts []*vhostPort
	ports  []*driver.Port
	runner *driver.Runner
	start  time.Time

	serveCancel context.CancelFunc
	serving     sync.WaitGroup
	stopOnce    sync.Once
	stopErr     error
}

// nicPort is one opened NIC with its IOMMU domain's IOVA allocator and the
// copy-path buffer pools of its engine ports.
type nicPort struct {
	name  string
	dev   vfio.Device
	nic   *ixgbe.Port
	alloc *hugepage.IOVAAllocator
	pools []*hugepage.DMAPool
	macs  *guestMACs
}

// guestMACs is a NIC's unicast address filter shared by the engine ports
// on it: every queue pair of a guest is an engine port that tells the
// filter the guest's MAC, and with one --pci several guests share the NIC.
// An address stays accepted while any port needs it, and the NIC's own
// permanent address is never added or removed.
type guestMACs struct {
	nic  *ixgbe.Port
	own  [6]byte
	mu   sync.Mutex
	refs map[[6]byte]int
}

func newGuestMACs(nic *ixgbe.Port) *guestMACs {
	g := &guestMACs{nic: nic, refs: map[[6]byte]int{}}
	copy(g.own[:], nic.MAC())
	return g
}

// AcceptGuestMAC implements driver.MACFilter. The new address is accepted
// before the old one is dropped, so no moment accepts neither.
func (g *guestMACs) AcceptGuestMAC(prev, mac [6]byte) error {
	if prev == mac {
		return nil
	}
	g.mu.Lock()
	defer g.mu.Unlock()
	if mac != g.own {
		if g.refs[mac] == 0 {
			if err := g.nic.AddMAC(mac[:]); err != nil {
				return fmt.Errorf("NIC filter: accept %s: %w", net.HardwareAddr(mac[:]), err)
			}
		}
		g.refs[mac]++
	}
	if prev == ([6]byte{}) || prev == g.own {
		return nil
	}
	if g.refs[prev]--; g.refs[prev] > 0 {
		return nil
	}
	delete(g.refs, prev)
	if err := g.nic.RemoveMAC(prev[:]); err != nil {
		return fmt.Errorf("NIC filter: stop accepting %s: %w", net.HardwareAddr(prev[:]), err)
	}
	return nil
}

// vhostPort is one vhost-user device and how it meets its front end.
type vhostPort struct {
	spec     vhostSpec
	dev      *vhost.Device
	dma      *driver.GuestDMA
	listener *net.UnixListener // server mode
}

// assemble opens every NIC port on devs (devs[i] is spec.Ports[i]'s device,
// real VFIO or simulated: the caller opened it and hands it over, assemble
// closes it on failure and shutdown closes it later), creates the vhost-user
// devices (listening already in server mode) and the engine ports, and
// prepares the lcores. Nothing polls until run.
func assemble(log *zap.Logger, spec applianceSpec, devs []vfio.Device) (_ *appliance, err error) {
	a := &appliance{log: log}
	defer func() {
		if err != nil {
			for _, p := range a.ports {
				_ = p.Close()
			}
			a.release()
			for _, d := range devs[len(a.nics):] {
				d.Close()
			}
		}
	}()
	if err := spec.validate(); err != nil {
		return nil, err
	}
	if len(devs) != len(spec.Ports) {
		return nil, fmt.Errorf("internal: %d devices for %d ports", len(devs), len(spec.Ports))
	}
	cpus, err := pollCPUs(spec.Lcores)
	if err != nil {
		return nil, err
	}
	for i, ps := range spec.Ports {
		np, err := openNICPort(ps, devs[i], spec)
		if err != nil {
			return nil, err
		}
		a.nics = append(a.nics, np)
		for j, vs := range ps.Vhost {
			vp, err := newVhostPort(log, vs, ps, np)
			if err != nil {
				return nil, err
			}
			a.vhosts = append(a.vhosts, vp)
			for pair := range ps.QueuePairs {
				p, err := np.newEnginePort(vp, pair, j*ps.QueuePairs+pair, ps, spec)
				if err != nil {
					return nil, err
				}
				a.ports = append(a.ports, p)
			}
		}
	}
	if len(cpus) > len(a.ports) {
		return nil, fmt.Errorf("-l gives %d lcores for %d engine ports: an lcore without a port would spin for nothing; give at most %d cores",
			len(cpus), len(a.ports), len(a.ports))
	}
	lcores := make([]driver.LcoreConfig, len(cpus))
	for i, c := range cpus {
		lcores[i] = driver.LcoreConfig{ID: i, CPU: c}
	}
	for i, p := range a.ports {
		l := &lcores[i%len(lcores)]
		l.Tasks = append(l.Tasks, p)
	}
	if testExtraTask != nil {
		lcores[0].Tasks = append(lcores[0].Tasks, testExtraTask())
	}
	a.runner, err = driver.NewRunner(driver.RunnerOptions{Idle: driver.IdleYield}, lcores)
	if err != nil {
		return nil, err
	}
	return a, nil
}

// openNICPort brings one NIC up with a queue pair per vhost queue pair.
// On failure the caller still owns dev.
func openNICPort(ps nicSpec, dev vfio.Device, spec applianceSpec) (*nicPort, error) {
	name := ps.PCI
	if name == "" {
		name = dev.Address()
	}
	alloc, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	if err != nil {
		return nil, err
	}
	queues := ps.QueuePairs * len(ps.Vhost)
	timeout := spec.linkTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	nic, err := ixgbe.Open(dev, ixgbe.Config{
		RxQueues: queues, TxQueues: queues, RSS: queues > 1,
		RxRingSize: ps.Rxd, TxRingSize: ps.Txd, MTU: ps.MTU,
		IOVA: alloc, LinkTimeout: timeout, RingMemory: hugepage.Options{PageSize: spec.pageSize},
	})
	if err != nil {
		return nil, fmt.Errorf("NIC port %s: %w", name, err)
	}
	return &nicPort{name: name, dev: dev, nic: nic, alloc: alloc, macs: newGuestMACs(nic)}, nil
}

func newVhostPort(log *zap.Logger, vs vhostSpec, ps nicSpec, np *nicPort) (*vhostPort, error) {
	vp := &vhostPort{spec: vs, dma: driver.NewGuestDMA(np.dev.DMA(), np.alloc)}
	var err error
	var mac net.HardwareAddr
	if vs.mac != ([6]byte{}) {
		mac = vs.mac[:] // the guest reads it from its config space
	}
	vp.dev, err = vhost.NewDevice(vhost.Config{
		Name: vs.Socket, Features: guestOffer(ps), QueuePairs: ps.QueuePairs, MTU: uint16(ps.MTU),
		MAC: mac, Hook: vp.dma, MemLimit: vs.memLimit, Logger: log,
	})
	if err != nil {
		return nil, err
	}
	if !vs.Client {
		if vp.listener, err = vhost.ListenWith(vs.Socket, vs.sock); err != nil {
			return nil, err
		}
	}
	return vp, nil
}

// newEnginePort joins NIC queue pair q to the vhost port's queue pair with
// a copy pool of its own, DMA-mapped in the NIC's domain.
func (np *nicPort) newEnginePort(vp *vhostPort, pair, q int, ps nicSpec, spec applianceSpec) (*driver.Port, error) {
	count := ps.Rxd + ps.Txd + 2*spec.Burst
	page := spec.pageSize
	if page == 0 {
		page = hugepage.Page2M
	}
	pool, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
		Pool:    hugepage.PoolConfig{BufSize: copyBufSize, Count: count},
		Memory:  hugepage.Options{PageSize: page, Name: "zcnet-copy"},
		Domains: []hugepage.DMADomain{{Mapper: np.dev.DMA(), IOVA: np.alloc}},
	})
	if err != nil {
		return nil, fmt.Errorf("copy buffers for %s queue %d: %w", np.name, q, err)
	}
	np.pools = append(np.pools, pool)
	return driver.NewPort(driver.PortConfig{
		Name:   fmt.Sprintf("%s/%d<->%s/%d", np.name, q, vp.spec.Socket, pair),
		Device: vp.dev, Pair: pair, NIC: np.nic.QueuePair(q), DMA: vp.dma,
		CopyPool: pool.Pool, ForceCopy: ps.Copy, Burst: spec.Burst,
		MACFilter: np.macs, GuestMAC: vp.spec.mac,
	})
}

// testExtraTask, set by tests only, adds a task to lcore 0 (e.g. one that
// panics, to check that a dead lcore stops the appliance).
var testExtraTask func() driver.Task

// lcoreDied delivers the error of an lcore that stopped because a task
// crashed: the ports it polled move no traffic any more.
func (a *appliance) lcoreDied() <-chan error { return a.runner.Failed() }

// dataPathDied logs a crashed lcore at once and returns the error the
// command exits with. The appliance does not limp on with part of its
// data path dead: like a DPDK application whose lcore crashed, it stops.
func (a *appliance) dataPathDied(err error) error {
	return logLcoreDeath(a.log, err)
}

func logLcoreDeath(log *zap.Logger, err error) error {
	fields := []zap.Field{zap.Error(err)}
	var pe *driver.TaskPanicError
	if errors.As(err, &pe) {
		fields = append(fields, zap.String("task", pe.Task), zap.Int("lcore", pe.Lcore), zap.ByteString("stack", pe.Stack))
	}
	log.Error("an lcore crashed and its ports stopped moving traffic; shutting down", fields...)
	return fmt.Errorf("data path stopped: %w (a bug in zcnet: report it with the stack logged above)", err)
}

// run serves the vhost-user sockets and starts the lcores. It returns once
// they poll; shutdown stops everything.
func (a *appliance) run(ctx context.Context) error {
	serveCtx, cancel := context.WithCancel(context.Background())
	a.serveCancel = cancel
	for _, vp := range a.vhosts {
		a.serving.Add(1)
		go func() {
			defer a.serving.Done()
			var err error
			if vp.listener != nil {
				err = vhost.ServeListener(serveCtx, vp.listener, vp.dev)
				vp.listener = nil // closed by ServeListener
			} else {
				err = vhost.DialAndServe(serveCtx, vp.spec.Socket, vp.dev, vhost.DefaultBackoff)
			}
			if err != nil {
				a.log.Error("vhost-user socket stopped serving", zap.String("socket", vp.spec.Socket), zap.Error(err))
			}
		}()
	}
	a.start = time.Now()
	if err := a.runner.Start(ctx); err != nil {
		return err
	}
	for _, l := range a.runner.Lcores() {
		a.log.Info("lcore polling", zap.Int("lcore", l.ID()), zap.Int("cpu", l.CPU()))
	}
	return nil
}

// shutdown stops the data path in the only safe order: lcores stop
// polling; every engine port stops its NIC queues and takes back the guest
// buffers they held; the vhost-user sessions end, which unmaps guest memory
// from the IOMMU and closes the sockets; then the NICs close (rings
// unmapped), the copy pools are freed and the devices closed. It is safe
// to call more than once.
func (a *appliance) shutdown() error {
	a.stopOnce.Do(func() {
		var errs []error
		if a.runner != nil {
			errs = append(errs, a.runner.Stop())
		}
		for _, p := range a.ports {
			errs = append(errs, p.Close())
		}
		if a.serveCancel != nil {
			a.serveCancel()
		}
		a.serving.Wait()
		errs = append(errs, a.release())
		a.stopErr = errors.Join(errs...)
	})
	return a.stopErr
}

// release closes what assemble opened, after the data path has stopped
// (or before it started).
func (a *appliance) release() error {
	var errs []error
	for _, vp := range a.vhosts {
		if vp.listener != nil {
			errs = append(errs, vp.listener.Close())
		}
	}
	for _, np := range a.nics {
		if err := np.nic.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close NIC port %s: %w", np.name, err))
			continue // its rings may still be live: keep the buffers too
		}
		for _, p := range np.pools {
			errs = append(errs, p.Close())
		}
		np.dev.Close()
	}
	return errors.Join(errs...)
}
