// Package appliance assembles zcnet's data path and owns its lifecycle:
// NIC ports opened over VFIO (or simulated), the vhost-user guests joined
// to their queue pairs by the zero-copy engine, the lcores polling them,
// and the one order in which all of it is torn down. Guests come and go
// while the rest keeps running (AddGuest, RemoveGuest); Snapshot reads
// every counter.
package appliance

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/vfio"
)

// Opener opens the NIC function at a PCI address: vfio.Open on a host, a
// simulated 82599 in tests and in `zcnet sim`. The appliance closes what
// it opened.
type Opener func(pci string) (vfio.Device, error)

// Option changes how Open assembles the appliance.
type Option func(*options)

type options struct {
	log   *zap.Logger
	tasks []pollmode.Task
}

// WithLogger logs the appliance's and its guests' events to log.
func WithLogger(log *zap.Logger) Option { return func(o *options) { o.log = log } }

// WithTask has the first lcore poll t as well as its ports (from Run on).
func WithTask(t pollmode.Task) Option { return func(o *options) { o.tasks = append(o.tasks, t) } }

// Appliance is the assembled data path.
type Appliance struct {
	log    *zap.Logger
	spec   Spec
	runner *pollmode.Runner
	// tasks counts the channels on each lcore: a new guest's ports
	// go to the least loaded ones.
	tasks []int

	mu      sync.Mutex // the control plane: guests, slots, running, closed
	nics    []*nic
	guests  []*guest // in the order they were added
	running bool
	closed  bool
	start   time.Time
	// serveCtx ends every guest's vhost-user serving at shutdown.
	serveCtx    context.Context
	serveCancel context.CancelFunc

	stopOnce sync.Once
	stopErr  error
}

// nic is one opened NIC port with its IOMMU domain's IOVA allocator and
// its guest slots.
type nic struct {
	name  string
	spec  NICSpec
	dev   vfio.Device
	port  *ixgbe.Port
	vf    *vfPort // an SR-IOV VF (port is nil then); see vf.go
	alloc *hugepage.IOVAAllocator
	slots []*guest // MaxGuests entries; nil: free
}

// Open opens every NIC port of spec through opener, creates the guests it
// lists (their sockets listening already in server mode) and prepares the
// lcores. Nothing polls and no front end is served until Run. On error,
// whatever was opened is closed again.
func Open(spec Spec, opener Opener, opts ...Option) (_ *Appliance, err error) {
	var o options
	for _, f := range opts {
		f(&o)
	}
	if o.log == nil {
		o.log = zap.NewNop()
	}
	if err := spec.normalize(); err != nil {
		return nil, err
	}
	cpus, err := pollmode.PollCPUs(spec.Lcores)
	if err != nil {
		return nil, err
	}
	slots := 0
	for _, ns := range spec.NICs {
		slots += ns.MaxGuests * ns.QueuePairs
	}
	if len(cpus) > slots {
		return nil, fmt.Errorf("%d lcores for at most %d channels: an lcore without a port would spin for nothing; give at most %d cores",
			len(cpus), slots, slots)
	}
	a := &Appliance{log: o.log, spec: spec, tasks: make([]int, len(cpus))}
	a.serveCtx, a.serveCancel = context.WithCancel(context.Background())
	defer func() {
		if err != nil {
			err = errors.Join(err, a.Shutdown())
		}
	}()
	lcores := make([]pollmode.LcoreConfig, len(cpus))
	for i, c := range cpus {
		lcores[i] = pollmode.LcoreConfig{ID: i, CPU: c}
	}
	lcores[0].Tasks = o.tasks
	if a.runner, err = pollmode.NewRunner(pollmode.RunnerOptions{Idle: pollmode.IdleYield}, lcores); err != nil {
		return nil, err
	}
	for _, ns := range spec.NICs {
		dev, err := opener(ns.PCI)
		if err != nil {
			return nil, fmt.Errorf("open %s: %w", ns.PCI, err)
		}
		n, err := openNIC(ns, dev, spec, a.log)
		if err != nil {
			dev.Close()
			return nil, err
		}
		a.nics = append(a.nics, n)
	}
	for i, ns := range spec.NICs {
		for _, gs := range ns.Guests {
			if _, err := a.addGuest(a.nics[i], gs); err != nil {
				return nil, err
			}
		}
	}
	return a, nil
}

// openNIC brings one NIC up with QueuePairs queue pairs per guest slot:
// with more than one slot, or a guest on a VLAN, each slot is a pool of
// the NIC.
func openNIC(ns NICSpec, dev vfio.Device, spec Spec, log *zap.Logger) (*nic, error) {
	name := ns.PCI
	if name == "" {
		name = dev.Address()
	}
	alloc, err := hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit)
	if err != nil {
		return nil, err
	}
	if vf, err := isVF(dev); err != nil {
		return nil, fmt.Errorf("NIC port %s: %w", name, err)
	} else if vf {
		return openVFNIC(ns, dev, spec, name, alloc, log)
	}
	timeout := spec.LinkTimeout
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	cfg := ixgbe.Config{
		RxRingSize: ns.Rxd, TxRingSize: ns.Txd, MTU: ns.MTU,
		IOVA: alloc, LinkTimeout: timeout, RingMemory: hugepage.Options{PageSize: spec.PageSize},
	}
	if ns.MaxGuests > 1 || ns.hasVLAN() {
		// Each guest a pool: the NIC writes a frame only into buffers of
		// the guest its destination MAC belongs to, which zero copy
		// needs (the NIC, not zcnet, picks the buffer).
		cfg.Pools, cfg.PoolQueues = ns.MaxGuests, ns.QueuePairs
	} else {
		cfg.RxQueues, cfg.TxQueues, cfg.RSS = ns.QueuePairs, ns.QueuePairs, ns.QueuePairs > 1
	}
	port, err := ixgbe.Open(dev, cfg)
	if err != nil {
		return nil, fmt.Errorf("NIC port %s: %w", name, err)
	}
	if port.Pools() > 0 {
		// Guest to guest on one port stays inside the NIC.
		port.SetPoolSwitching(true)
	}
	return &nic{name: name, spec: ns, dev: dev, port: port, alloc: alloc,
		slots: make([]*guest, ns.MaxGuests)}, nil
}

// Run starts serving the guests' sockets and the lcores. It returns once
// they poll; Shutdown stops everything. ctx ending stops the lcores too.
func (a *Appliance) Run(ctx context.Context) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return errors.New("appliance: Run after Shutdown")
	}
	if a.running {
		return errors.New("appliance: Run twice")
	}
	for _, g := range a.guests {
		g.serve(a.serveCtx)
	}
	a.start = time.Now()
	if err := a.runner.Start(ctx); err != nil {
		return err
	}
	a.running = true
	for _, l := range a.runner.Lcores() {
		a.log.Info("lcore polling", zap.Int("lcore", l.ID()), zap.Int("cpu", l.CPU()))
	}
	return nil
}

// Failed delivers the error of an lcore that stopped because a task
// crashed: the ports it polled move no traffic any more.
func (a *Appliance) Failed() <-chan error { return a.runner.Failed() }

// Shutdown stops the data path in the only safe order: the lcores stop
// polling; each guest is torn down as RemoveGuest does (its NIC queues
// stopped and drained, its buffers given back, its session ended, which
// unmaps its memory from the IOMMU, its socket closed, its copy buffers
// freed); then the NICs close (rings unmapped) and the devices with them.
// It is safe to call more than once.
func (a *Appliance) Shutdown() error {
	a.stopOnce.Do(func() {
		a.mu.Lock()
		defer a.mu.Unlock()
		a.closed = true
		var errs []error
		if a.runner != nil {
			errs = append(errs, a.runner.Stop())
		}
		for i := len(a.guests) - 1; i >= 0; i-- {
			errs = append(errs, a.guests[i].teardown(a))
		}
		a.guests = nil
		a.serveCancel()
		for _, n := range a.nics {
			if err := n.close(); err != nil {
				// Its rings may still be live: leave the device open.
				errs = append(errs, fmt.Errorf("close NIC port %s: %w", n.name, err))
				continue
			}
			n.dev.Close()
		}
		a.stopErr = errors.Join(errs...)
	})
	return a.stopErr
}

// NICInfo describes a NIC port.
type NICInfo struct {
	Name string `json:"name"`
	// MAC is the port's permanent address.
	MAC        string `json:"mac"`
	QueuePairs int    `json:"queue_pairs_per_guest"`
	MaxGuests  int    `json:"max_guests"`
	Guests     int    `json:"guests"`
}

// NICs describes the NIC ports, in the order of the Spec.
func (a *Appliance) NICs() []NICInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]NICInfo, 0, len(a.nics))
	for _, n := range a.nics {
		out = append(out, NICInfo{Name: n.name, MAC: n.mac().String(), QueuePairs: n.spec.QueuePairs,
			MaxGuests: len(n.slots), Guests: len(n.slots) - countFree(n.slots)})
	}
	return out
}

// Lcores are the poll cores, whether or not they run yet.
func (a *Appliance) Lcores() []*pollmode.Lcore { return a.runner.Lcores() }

// hasVLAN reports whether a listed guest is on a VLAN.
func (ns NICSpec) hasVLAN() bool {
	for _, g := range ns.Guests {
		if g.VLAN != 0 {
			return true
		}
	}
	return false
}
