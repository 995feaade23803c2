package fwd

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/vfio"
)

// PairConfig is how OpenPair assembles the two-port forwarder.
type PairConfig struct {
	// Names name the two ports in forwarder names and errors (default:
	// the devices' addresses).
	Names [2]string
	// RxRing, TxRing and MTU of both ports (0: the driver's defaults).
	RxRing, TxRing, MTU int
	// Burst is the most frames a forwarder moves per poll (default 32).
	Burst int
	// PoolBufs is how many 2 KiB buffers each direction has (default
	// 4096).
	PoolBufs int
	// PageSize backs the buffer pools (0: 2 MiB hugepages).
	PageSize hugepage.PageSize
	// CPUs are the poll cores: with two or more, one forwarder each on
	// the first two; with one, both forwarders on it.
	CPUs []int
	// LinkTimeout bounds the wait for link up (0: 10 s).
	LinkTimeout time.Duration
}

// Pair forwards between two NIC ports in both directions, as testpmd's io
// mode does: port i's receive queue 0 feeds port 1-i's transmit queue 0.
// Each direction has a buffer pool mapped at one IOVA into both ports'
// IOMMU domains (one NIC writes a frame into a buffer, the other reads it
// from there). Close tears it down in the one safe order.
type Pair struct {
	names  [2]string
	devs   [2]vfio.Device
	ports  [2]*ixgbe.Port
	allocs [2]*hugepage.IOVAAllocator
	fwds   [2]*Forwarder
	pools  []*hugepage.DMAPool
	runner *pollmode.Runner
	closed bool
}

// OpenPair opens both ports with one queue pair each, the two pools and
// the forwarders, and prepares the lcores; nothing polls until Start.
// The pair owns the devices from now on, even when it fails: on error
// whatever was opened is closed again.
func OpenPair(devA, devB vfio.Device, cfg PairConfig) (_ *Pair, err error) {
	if cfg.Burst == 0 {
		cfg.Burst = 32
	}
	if cfg.PoolBufs == 0 {
		cfg.PoolBufs = 4096
	}
	if cfg.PageSize == 0 {
		cfg.PageSize = hugepage.Page2M
	}
	if cfg.LinkTimeout == 0 {
		cfg.LinkTimeout = 10 * time.Second
	}
	p := &Pair{names: cfg.Names, devs: [2]vfio.Device{devA, devB}}
	defer func() {
		if err != nil {
			err = errors.Join(err, p.Close())
		}
	}()
	if len(cfg.CPUs) == 0 {
		return nil, errors.New("forward: no poll core")
	}
	for i, dev := range p.devs {
		if p.names[i] == "" {
			p.names[i] = dev.Address()
		}
		if p.allocs[i], err = hugepage.NewIOVAAllocator(hugepage.DefaultIOVABase, hugepage.DefaultIOVALimit); err != nil {
			return nil, err
		}
		if p.ports[i], err = ixgbe.Open(dev, ixgbe.Config{
			RxRingSize: cfg.RxRing, TxRingSize: cfg.TxRing, MTU: cfg.MTU, IOVA: p.allocs[i],
			LinkTimeout: cfg.LinkTimeout,
		}); err != nil {
			return nil, fmt.Errorf("%s: %w", p.names[i], err)
		}
	}
	for i := range p.fwds {
		from, to := i, 1-i
		pool, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
			Pool:   hugepage.PoolConfig{BufSize: 2048, Count: cfg.PoolBufs},
			Memory: hugepage.Options{PageSize: cfg.PageSize, Name: "zcnet-fwd"},
			Domains: []hugepage.DMADomain{
				{Mapper: p.devs[from].DMA(), IOVA: p.allocs[from]},
				{Mapper: p.devs[to].DMA(), IOVA: p.allocs[to]},
			},
		})
		if err != nil {
			return nil, err
		}
		p.pools = append(p.pools, pool)
		if p.fwds[i], err = New(p.names[from]+"->"+p.names[to], p.ports[from].RxQueue(0), p.ports[to].TxQueue(0), pool.Pool, cfg.Burst); err != nil {
			return nil, err
		}
	}
	lcores := []pollmode.LcoreConfig{{ID: 0, CPU: cfg.CPUs[0], Tasks: []pollmode.Task{p.fwds[0], p.fwds[1]}}}
	if len(cfg.CPUs) >= 2 {
		lcores = []pollmode.LcoreConfig{
			{ID: 0, CPU: cfg.CPUs[0], Tasks: []pollmode.Task{p.fwds[0]}},
			{ID: 1, CPU: cfg.CPUs[1], Tasks: []pollmode.Task{p.fwds[1]}}}
	}
	if p.runner, err = pollmode.NewRunner(pollmode.RunnerOptions{Idle: pollmode.IdleYield}, lcores); err != nil {
		return nil, err
	}
	return p, nil
}

// Start starts the lcores; ctx ending stops them too.
func (p *Pair) Start(ctx context.Context) error { return p.runner.Start(ctx) }

// Failed delivers the error of an lcore that stopped because a forwarder
// crashed.
func (p *Pair) Failed() <-chan error { return p.runner.Failed() }

// Stop stops the lcores (the forwarders' counters then stay still). It
// returns the error an lcore died of, if one did.
func (p *Pair) Stop() error {
	if p.runner == nil {
		return nil
	}
	return p.runner.Stop()
}

// Forwarders are the two directions: [0] port A to B, [1] B to A.
func (p *Pair) Forwarders() [2]*Forwarder { return p.fwds }

// Port is port i (0: A, 1: B) and its name.
func (p *Pair) Port(i int) (*ixgbe.Port, string) { return p.ports[i], p.names[i] }

// Close tears the pair down in the only safe order: the lcores stop; the
// ports stop, handing back every buffer the NICs held; only then are the
// pools unmapped and freed (not at all if a port failed to stop: its
// NIC may still hold them); then the ports close and the devices with
// them. Safe to call more than once.
func (p *Pair) Close() error {
	if p.closed {
		return nil
	}
	p.closed = true
	var errs []error
	if err := p.Stop(); err != nil {
		errs = append(errs, err)
	}
	stopped := true
	for i, port := range p.ports {
		if port == nil {
			continue
		}
		if err := port.Stop(); err != nil {
			stopped = false
			errs = append(errs, fmt.Errorf("stop port %s: %w", p.names[i], err))
		}
	}
	if stopped {
		for _, pool := range p.pools {
			if err := pool.Close(); err != nil {
				errs = append(errs, fmt.Errorf("free buffer pool: %w", err))
			}
		}
	}
	for i, port := range p.ports {
		if port != nil {
			if err := port.Close(); err != nil {
				// Its rings may still be live: leave the device open.
				errs = append(errs, fmt.Errorf("close port %s: %w", p.names[i], err))
				continue
			}
		}
		if p.devs[i] != nil {
			p.devs[i].Close()
		}
	}
	return errors.Join(errs...)
}
