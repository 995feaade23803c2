package appliance

import (
	"context"
	"errors"
	"fmt"
	"net"
	"strings"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/engine"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/vhost"
)

// guest is one vhost-user device served on a NIC slot: a channel per
// queue pair, each with a copy pool of its own and polled by one lcore.
type guest struct {
	cfg  guestConfig
	nic  *nic
	slot int
	dev  *vhost.Device
	dma  *engine.GuestDMA
	// listener is the server-mode socket until serving takes it over.
	listener *net.UnixListener
	channels []*engine.Channel
	lcores   []int // lcores[i] polls channels[i]
	// macs is the NIC's address filter for this guest (its pool's, on a
	// NIC with pools).
	macs   *guestMACs
	pools  []*hugepage.DMAPool
	cancel context.CancelFunc
	done   chan struct{} // closed when serving has ended; nil: never served
	log    *zap.Logger
}

// GuestInfo describes a guest for `zcnet port list` and `port show`.
type GuestInfo struct {
	Socket string `json:"socket"`
	// Mode is "server" (zcnet listens, the front end connects) or
	// "client" (zcnet connects and reconnects).
	Mode string `json:"mode"`
	NIC  string `json:"nic"`
	// Queues are the NIC queue pairs the guest's queue pairs use, in
	// order.
	Queues    []int `json:"queues"`
	Lcores    []int `json:"lcores"`
	Connected bool  `json:"connected"`
	// Ready: the front end has mapped its memory and started its first
	// receive ring; the port starts the NIC queue with its buffers at its
	// next poll.
	Ready bool `json:"ready"`
	// MAC is the guest's address the NIC accepts for it ("" until one is
	// known), MACSource "configured" or "learned".
	MAC       string `json:"mac"`
	MACSource string `json:"mac_source"`
	// VLAN is the guest's access VLAN (0: untagged).
	VLAN     uint16 `json:"vlan,omitempty"`
	MemLimit string `json:"mem_limit,omitempty"`
}

// AddGuest serves a new guest on NIC port pci (empty: the first NIC port
// with a free slot) while everything else keeps running: its channels
// join the least loaded lcores between two polling rounds, and in server
// mode its socket listens when AddGuest returns. On error nothing of the
// guest is left behind.
func (a *Appliance) AddGuest(pci string, gs GuestSpec) (GuestInfo, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	g, err := a.addGuestLocked(pci, gs)
	if err != nil {
		return GuestInfo{}, err
	}
	return g.info(), nil
}

func (a *Appliance) addGuestLocked(pci string, gs GuestSpec) (*guest, error) {
	if a.closed {
		return nil, errors.New("appliance: shut down")
	}
	var n *nic
	for _, c := range a.nics {
		if (pci == "" && c.freeSlot() >= 0) || (pci != "" && c.name == pci) {
			n = c
			break
		}
	}
	if n == nil {
		if pci == "" {
			return nil, fmt.Errorf("no NIC port has a free guest slot (%s)", a.slotSummary())
		}
		return nil, fmt.Errorf("no NIC port %s (this instance has %s)", pci, a.nicNames())
	}
	g, err := a.addGuest(n, gs)
	if err != nil {
		return nil, err
	}
	if a.running {
		g.serve(a.serveCtx)
	}
	a.log.Info("guest added", zap.String("socket", g.cfg.Socket), zap.String("nic", n.name), zap.Ints("lcores", g.lcores))
	return g, nil
}

// RemoveGuest stops serving the guest on socket while everything else
// keeps running, in the order that keeps the NIC from touching memory
// that is gone: its channels leave their lcores (which go on polling
// the others), its NIC queues stop and every guest buffer goes back to the
// guest, its session ends (guest memory unmapped from the IOMMU) and its
// socket closes, its copy buffers are freed and its MAC leaves the NIC's
// filter. The slot is then free for the next guest.
func (a *Appliance) RemoveGuest(socket string) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.removeGuestLocked(socket)
}

func (a *Appliance) removeGuestLocked(socket string) error {
	for i, g := range a.guests {
		if g.cfg.Socket != socket {
			continue
		}
		a.guests = append(a.guests[:i], a.guests[i+1:]...)
		err := g.teardown(a)
		a.log.Info("guest removed", zap.String("socket", socket), zap.Error(err))
		return err
	}
	return fmt.Errorf("no guest on socket %s", socket)
}

// Guests describes every guest, in the order they were added.
func (a *Appliance) Guests() []GuestInfo {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make([]GuestInfo, 0, len(a.guests))
	for _, g := range a.guests {
		out = append(out, g.info())
	}
	return out
}

// Guest describes the guest on socket and its channels' counters, one
// per queue pair.
func (a *Appliance) Guest(socket string) (GuestInfo, []PortCounters, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, g := range a.guests {
		if g.cfg.Socket == socket {
			var pcs []PortCounters
			for _, p := range g.channels {
				pcs = append(pcs, portCounters(p))
			}
			return g.info(), pcs, nil
		}
	}
	return GuestInfo{}, nil, fmt.Errorf("no guest on socket %s", socket)
}

// addGuest creates guest gs on a free slot of n (a.mu held or not yet
// shared). On error it undoes what it did.
func (a *Appliance) addGuest(n *nic, gs GuestSpec) (_ *guest, err error) {
	cfg, err := checkGuest(gs)
	if err != nil {
		return nil, fmt.Errorf("NIC port %s: %w", n.name, err)
	}
	for _, o := range a.guests {
		if o.cfg.Socket == cfg.Socket {
			return nil, fmt.Errorf("vhost-user socket %s is served already (on %s): each guest needs a socket of its own", cfg.Socket, o.nic.name)
		}
	}
	slot := n.freeSlot()
	if slot < 0 {
		if n.vf != nil {
			return nil, fmt.Errorf("NIC port %s is an SR-IOV VF and serves a guest already: one VF per guest (its own IOMMU domain); give this guest another VF", n.name)
		}
		return nil, fmt.Errorf("NIC port %s serves %d guests already, its max_guests", n.name, len(n.slots))
	}
	if n.vf != nil {
		if err := n.vfGuestMAC(&cfg); err != nil {
			return nil, fmt.Errorf("guest %s: %w", cfg.Socket, err)
		}
	}
	ns := n.spec
	g := &guest{cfg: cfg, nic: n, slot: slot, dma: engine.NewGuestDMA(n.dev.DMA(), n.alloc),
		log: a.log.With(zap.String("socket", cfg.Socket))}
	defer func() {
		if err != nil {
			err = errors.Join(fmt.Errorf("guest %s: %w", cfg.Socket, err), g.teardown(a))
		}
	}()
	n.slots[slot] = g
	pool := -1
	if n.pools() > 0 {
		pool = slot
	}
	g.macs = n.guestMACs(pool, cfg.Trusted)
	var mac net.HardwareAddr
	if cfg.mac != ([6]byte{}) {
		mac = cfg.mac[:] // the guest reads it from its config space
	}
	g.dev, err = vhost.NewDevice(vhost.Config{
		Name: cfg.Socket, Features: guestOffer(ns), QueuePairs: ns.QueuePairs, MTU: uint16(ns.MTU),
		MAC: mac, FixedMAC: mac != nil && !cfg.Trusted, Hook: g.dma, MemLimit: cfg.memLimit, Logger: g.log,
		Migration: cfg.Migrates(),
	})
	if err != nil {
		return nil, err
	}
	if !cfg.Client {
		if g.listener, err = vhost.ListenWith(cfg.Socket, cfg.sock); err != nil {
			return nil, err
		}
	}
	for pair := range ns.QueuePairs {
		if err := a.addChannel(g, pair); err != nil {
			return nil, err
		}
	}
	if cfg.VLAN != 0 && pool < 0 {
		return nil, fmt.Errorf("vlan %d: NIC port %s runs without pools (one guest slot, no guest on a VLAN when it opened); give it max_guests 2 or more", cfg.VLAN, n.name)
	}
	if pool >= 0 {
		if err := n.port.SetPoolVLAN(pool, cfg.VLAN); err != nil {
			return nil, err
		}
		if err := n.port.EnablePool(pool, true); err != nil {
			return nil, err
		}
	}
	a.guests = append(a.guests, g)
	return g, nil
}

// queue is the NIC queue pair joined to the guest's queue pair: the
// pool's on a NIC with pools, else the NIC's own (the only guest).
func (g *guest) queue(pair int) int {
	if g.macs.pool >= 0 {
		return g.slot*g.nic.port.QueuesPerPool() + pair
	}
	return pair
}

// addChannel joins the guest's queue pair to its NIC queue pair, with a
// copy pool of its own DMA-mapped in the NIC's domain, and has the least
// loaded lcore poll it.
func (a *Appliance) addChannel(g *guest, pair int) error {
	n, ns := g.nic, g.nic.spec
	q := g.queue(pair)
	page := a.spec.PageSize
	if page == 0 {
		page = hugepage.Page2M
	}
	pool, err := hugepage.NewDMAPool(hugepage.DMAPoolConfig{
		Pool:    hugepage.PoolConfig{BufSize: copyBufSize, Count: ns.Rxd + ns.Txd + 2*a.spec.Burst},
		Memory:  hugepage.Options{PageSize: page, Name: "zcnet-copy"},
		Domains: []hugepage.DMADomain{{Mapper: n.dev.DMA(), IOVA: n.alloc}},
	})
	if err != nil {
		return fmt.Errorf("copy buffers for %s queue %d: %w", n.name, q, err)
	}
	g.pools = append(g.pools, pool)
	p, err := engine.NewChannel(engine.ChannelConfig{
		Name:   fmt.Sprintf("%s/%d<->%s/%d", n.name, q, g.cfg.Socket, pair),
		Device: g.dev, Pair: pair, NIC: n.queuePair(q), DMA: g.dma,
		CopyPool: pool.Pool, ForceCopy: ns.Copy, Burst: a.spec.Burst,
		MACFilter: g.macs, GuestMAC: g.cfg.mac, FollowGuestMAC: g.cfg.Trusted,
	})
	if err != nil {
		return err
	}
	l := 0
	for i, c := range a.tasks {
		if c < a.tasks[l] {
			l = i
		}
	}
	if err := a.runner.Lcores()[l].AddTask(n.newTask(g, p)); err != nil {
		return errors.Join(err, p.Close())
	}
	a.tasks[l]++
	g.channels, g.lcores = append(g.channels, p), append(g.lcores, l)
	return nil
}

// serve starts serving the guest's socket until ctx ends or the guest is
// torn down.
func (g *guest) serve(parent context.Context) {
	ctx, cancel := context.WithCancel(parent)
	g.cancel, g.done = cancel, make(chan struct{})
	l := g.listener
	g.listener = nil // ServeListener closes it
	go func() {
		defer close(g.done)
		var err error
		if l != nil {
			err = vhost.ServeListener(ctx, l, g.dev)
		} else {
			err = vhost.DialAndServe(ctx, g.cfg.Socket, g.dev, vhost.DefaultBackoff)
		}
		if err != nil {
			g.log.Error("vhost-user socket stopped serving", zap.Error(err))
		}
	}()
}

// teardown is the one order in which a guest goes away (RemoveGuest, and
// Shutdown after the lcores have stopped): its channels leave their
// lcores and stop their NIC queues, taking every buffer back; only then
// does its session end, unmapping its memory from the IOMMU, and its
// socket close; then its copy buffers are freed (unless a NIC queue
// failed to stop and may still hold them) and the slot is free.
func (g *guest) teardown(a *Appliance) error {
	var errs []error
	stopped := true
	for i, p := range g.channels {
		errs = append(errs, a.runner.Lcores()[g.lcores[i]].RemoveTask(g.nic.task(p)))
		a.tasks[g.lcores[i]]--
		if err := p.Close(); err != nil {
			stopped = false
			errs = append(errs, fmt.Errorf("channel %s: %w", p.Name(), err))
		}
	}
	g.channels, g.lcores = nil, nil
	if g.macs != nil && g.macs.pool >= 0 && stopped {
		// The pool's queues are stopped: it takes no more copies of
		// broadcast, and the next guest on the slot starts clean.
		errs = append(errs, g.nic.port.SetPoolAntiSpoof(g.macs.pool, false), g.nic.port.EnablePool(g.macs.pool, false),
			g.nic.port.SetPoolVLAN(g.macs.pool, 0))
	}
	if g.cancel != nil {
		g.cancel()
		<-g.done
	} else if g.listener != nil {
		errs = append(errs, g.listener.Close())
	}
	if stopped {
		for _, p := range g.pools {
			errs = append(errs, p.Close())
		}
	}
	g.pools = nil
	if n := g.dma.Mapped(); n != 0 {
		errs = append(errs, fmt.Errorf("guest %s: %d regions still DMA-mapped after its session ended", g.cfg.Socket, n))
	}
	g.nic.slots[g.slot] = nil
	return errors.Join(errs...)
}

func (g *guest) info() GuestInfo {
	gi := GuestInfo{Socket: g.cfg.Socket, Mode: "server", NIC: g.nic.name, VLAN: g.cfg.VLAN, MemLimit: g.cfg.MemLimit}
	if g.cfg.Client {
		gi.Mode = "client"
	}
	if g.dev != nil {
		gi.Connected = g.dev.Connected()
		g.dev.LockDataPath()
		gi.Ready = g.dev.RxQueue(0) != nil && g.dma.Mapped() > 0
		g.dev.UnlockDataPath()
	}
	for i, p := range g.channels {
		gi.Queues = append(gi.Queues, g.queue(i))
		gi.Lcores = append(gi.Lcores, g.lcores[i])
		if mac, static := p.GuestMAC(); i == 0 && mac != ([6]byte{}) {
			gi.MAC, gi.MACSource = net.HardwareAddr(mac[:]).String(), "learned"
			if static {
				gi.MACSource = "configured"
			}
		}
	}
	return gi
}

func (n *nic) freeSlot() int {
	for i, g := range n.slots {
		if g == nil {
			return i
		}
	}
	return -1
}

func (a *Appliance) nicNames() string {
	names := make([]string, len(a.nics))
	for i, n := range a.nics {
		names[i] = n.name
	}
	return strings.Join(names, ", ")
}

func (a *Appliance) slotSummary() string {
	parts := make([]string, len(a.nics))
	for i, n := range a.nics {
		parts[i] = fmt.Sprintf("%s: %d of %d used", n.name, len(n.slots)-countFree(n.slots), len(n.slots))
	}
	return strings.Join(parts, ", ")
}

func countFree(slots []*guest) int {
	k := 0
	for _, g := range slots {
		if g == nil {
			k++
		}
	}
	return k
}
