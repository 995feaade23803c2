package appliance

import (
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/engine"
	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/ring"
	"github.com/zcnet/zcnet/vfio"
)

// A NIC port that is an 82599 SR-IOV virtual function, the host's Linux
// driver keeping the PF: it serves exactly one guest, whose memory is
// the only memory mapped in the VF's IOMMU domain (the point of one VF
// per guest: the IOMMU then enforces what descriptor validation checks).
// The guest's MAC is the VF's, asked of the host through the mailbox;
// the guest's channel runs on the VF's queue pair 0 with the engine
// unchanged.
//
// Reset recovery: the host's PF driver may reset the VF at any time (its
// own reset, an administrator's change, a function reset). The VF's
// queues stop under the channel; the channel must take its buffers back
// through its own stop path and start the queues again after the VF is
// brought up. The lcore polls the guest's channel through vfTask, which
// every resetCheckEvery polls asks the VF whether it was reset (one
// register read) and, if so, has the channel stop and drain its queues
// (engine.Channel.RestartNIC, the path a front end's ring stop takes,
// under the data-path lock), then hands the bring-up to a goroutine of
// the VF port (vfPort.bringUp: ixgbe.VF.Recover, mailbox exchanges that
// wait up to a second each when the host is slow or silent, retried
// every vfRetry). The lcore does not wait for it: between polls it only
// reads the port's recovering flag, so the other channels of the lcore
// keep moving frames, and once the VF is up it polls the channel again,
// which starts the queues with the guest's buffers. The bring-up touches
// no queue and no guest buffer (the channel holds them all, or gave them
// back), so it needs no data-path lock. The channel's per-frame path is
// unchanged.

// resetCheckEvery is how many polls of a VF's channel pass between two
// checks for a reset by the PF (one register read each).
const resetCheckEvery = 16

// vfRetry is how long a failed bring-up after a reset waits before the
// next attempt (the PF may still be resetting).
const vfRetry = 100 * time.Millisecond

// vfPort is the VF side of a NIC port (nic.vf; nic.port is nil then).
type vfPort struct {
	vf   *ixgbe.VF
	task *vfTask // the guest's channel; nil without a guest

	// recovering: a goroutine is bringing the VF up after a reset by the
	// PF (bringUp); the channel's queues stay stopped until it clears.
	recovering atomic.Bool
	recoveries atomic.Uint64 // bring-ups completed
	quit       chan struct{} // closed by close: a bring-up gives up
	wg         sync.WaitGroup
}

func newVFPort(vf *ixgbe.VF) *vfPort { return &vfPort{vf: vf, quit: make(chan struct{})} }

// resetPending reports whether the VF needs, or is in, a recovery; it
// never waits for a bring-up in progress.
func (p *vfPort) resetPending() bool {
	return p.recovering.Load() || p.vf.ResetPending()
}

// startBringUp has a goroutine bring the VF up after a reset whose
// queues the channel stopped and drained, unless one is at it already.
func (p *vfPort) startBringUp(log *zap.Logger) {
	if !p.recovering.CompareAndSwap(false, true) {
		return
	}
	p.wg.Add(1)
	go p.bringUp(log)
}

// bringUp brings the VF up, retrying every vfRetry while the PF does not
// answer or refuses, until it is up or the port closes (the VF then stays
// marked recovering: its queues are not started again).
func (p *vfPort) bringUp(log *zap.Logger) {
	defer p.wg.Done()
	for attempt := 1; ; attempt++ {
		err := p.vf.Recover()
		if err == nil {
			p.recoveries.Add(1)
			p.recovering.Store(false)
			if attempt > 1 {
				log.Info("the VF is up again after a reset by the PF", zap.Int("attempts", attempt))
			}
			return
		}
		if attempt == 1 || attempt%50 == 0 {
			log.Warn("bringing the VF up after a reset by the PF failed; retrying", zap.Int("attempt", attempt), zap.Error(err))
		}
		select {
		case <-p.quit:
			return
		case <-time.After(vfRetry):
		}
	}
}

// stop ends a bring-up in progress and waits for it.
func (p *vfPort) stop() {
	select {
	case <-p.quit:
	default:
		close(p.quit)
	}
	p.wg.Wait()
}

// isVF reports whether dev is an SR-IOV virtual function of an Intel
// 10 GbE controller, by the device ID in its configuration space.
func isVF(dev vfio.Device) (bool, error) {
	cfg := dev.Config()
	vendor, err := cfg.Read16(vfio.PCIVendorID)
	if err != nil {
		return false, fmt.Errorf("read the vendor ID: %w", err)
	}
	device, err := cfg.Read16(vfio.PCIDeviceID)
	if err != nil {
		return false, fmt.Errorf("read the device ID: %w", err)
	}
	m, ok := ixgbe.Lookup(vendor, device)
	return ok && m.VF, nil
}

// openVFNIC brings up the VF behind dev for the one guest it serves. The
// first listed guest's MAC is asked of the host (a refusal names what the
// host's administrator can change); without one the VF keeps the MAC the
// host assigned and the guest is given it.
func openVFNIC(ns NICSpec, dev vfio.Device, spec Spec, name string, alloc *hugepage.IOVAAllocator, log *zap.Logger) (*nic, error) {
	switch {
	case ns.MaxGuests > 1:
		return nil, fmt.Errorf("NIC port %s is an SR-IOV VF: it serves one guest (its own IOMMU domain is the point), not max_guests %d; give each guest a VF of its own", name, ns.MaxGuests)
	case ns.QueuePairs > 1:
		return nil, fmt.Errorf("NIC port %s is an SR-IOV VF: one queue pair per guest (queue_pairs %d)", name, ns.QueuePairs)
	}
	cfg := ixgbe.VFConfig{
		RxRingSize: ns.Rxd, TxRingSize: ns.Txd, MTU: ns.MTU, IOVA: alloc,
		LinkTimeout: spec.LinkTimeout, RingMemory: hugepage.Options{PageSize: spec.PageSize},
		Logf: func(format string, args ...any) { log.Info(fmt.Sprintf(format, args...), zap.String("nic", name)) },
	}
	if cfg.LinkTimeout == 0 {
		cfg.LinkTimeout = 10 * time.Second
	}
	for _, gs := range ns.Guests {
		if err := checkVFGuest(name, gs); err != nil {
			return nil, err
		}
		if gc, err := checkGuest(gs); err == nil && gc.mac != ([6]byte{}) {
			cfg.MAC = net.HardwareAddr(gc.mac[:])
		}
	}
	vf, err := ixgbe.OpenVF(dev, cfg)
	if err != nil {
		var re *ixgbe.RefusedError
		if errors.As(err, &re) && cfg.MAC != nil {
			return nil, fmt.Errorf("NIC port %s (an SR-IOV VF), the guest's MAC %s: %w", name, cfg.MAC, err)
		}
		return nil, fmt.Errorf("NIC port %s (an SR-IOV VF): %w", name, err)
	}
	return &nic{name: name, spec: ns, dev: dev, vf: newVFPort(vf), alloc: alloc, slots: make([]*guest, 1)}, nil
}

// checkVFGuest refuses what a guest on a VF cannot have.
func checkVFGuest(name string, gs GuestSpec) error {
	if gs.VLAN != 0 {
		return fmt.Errorf("NIC port %s is an SR-IOV VF: its VLAN is the host's to set (ip link set PF vf N vlan %d), not the guest's (vlan %d)", name, gs.VLAN, gs.VLAN)
	}
	return nil
}

// vfGuestMAC settles the MAC of the guest joining VF port n: the
// configured one, asked of the host, or else the VF's, which the guest
// is then given.
func (n *nic) vfGuestMAC(cfg *guestConfig) error {
	if err := checkVFGuest(n.name, cfg.GuestSpec); err != nil {
		return err
	}
	vf := n.vf.vf
	if cfg.mac == ([6]byte{}) {
		copy(cfg.mac[:], vf.MAC())
		return nil
	}
	if mac := net.HardwareAddr(cfg.mac[:]); mac.String() != vf.MAC().String() {
		if err := vf.SetMAC(mac); err != nil {
			return fmt.Errorf("MAC %s on NIC port %s (an SR-IOV VF): %w", mac, n.name, err)
		}
	}
	return nil
}

// pools is how many pools the NIC port runs (none on a VF).
func (n *nic) pools() int {
	if n.vf != nil {
		return 0
	}
	return n.port.Pools()
}

// guestMACs is the address filter a guest's channels tell its MAC.
func (n *nic) guestMACs(pool int, trusted bool) *guestMACs {
	if n.vf != nil {
		return &guestMACs{vf: n.vf.vf, pool: -1, refs: map[[6]byte]int{}}
	}
	return newGuestMACs(n.port, pool, trusted)
}

// queuePair is NIC queue pair q on the ring contract.
func (n *nic) queuePair(q int) ring.QueuePair {
	if n.vf != nil {
		return n.vf.vf.QueuePair(q)
	}
	return n.port.QueuePair(q)
}

// newTask is what an lcore polls for channel p of guest g: the channel,
// or on a VF the channel with reset recovery.
func (n *nic) newTask(g *guest, p *engine.Channel) pollmode.Task {
	if n.vf == nil {
		return p
	}
	t := &vfTask{port: n.vf, ch: p, log: g.log.With(zap.String("nic", n.name))}
	n.vf.task = t
	return t
}

// task is the lcore's task for channel p (as newTask made it).
func (n *nic) task(p *engine.Channel) pollmode.Task {
	if n.vf != nil && n.vf.task != nil && n.vf.task.ch == p {
		return n.vf.task
	}
	return p
}

// queueUse is how many buffers NIC queue pair q holds.
func (n *nic) queueUse(q int) (rxPosted, txInFlight int) {
	if n.vf != nil {
		return n.vf.vf.RxQueue(q).Posted(), n.vf.vf.TxQueue(q).InFlight()
	}
	return n.port.RxQueue(q).Posted(), n.port.TxQueue(q).InFlight()
}

// mac is the NIC port's address: the PF's permanent one, or the VF's.
func (n *nic) mac() net.HardwareAddr {
	if n.vf != nil {
		return n.vf.vf.MAC()
	}
	return n.port.MAC()
}

// close stops and closes the NIC port.
func (n *nic) close() error {
	if n.vf != nil {
		n.vf.stop()
		return n.vf.vf.Close()
	}
	return n.port.Close()
}

// vfCounters are a VF port's counters: what the VF counts of its own
// traffic (the port's MAC counters are the PF's, the host's).
func (n *nic) vfCounters() NICCounters {
	st := n.vf.vf.Stats()
	return NICCounters{Name: n.name, RxPackets: st.RxPackets, RxBytes: st.RxBytes, TxPackets: st.TxPackets,
		TxBytes: st.TxBytes, VFResets: &st.Resets}
}

// vfTask polls a VF's guest channel and recovers from resets by the PF
// between polls (see the top of this file).
type vfTask struct {
	port *vfPort
	ch   *engine.Channel
	log  *zap.Logger

	polls uint32
	// down: a reset was seen and the VF is not up again; the channel's
	// queues are stopped and it is not polled.
	// (Atomic: Snapshot-time readers and tests look at both.)
	down atomic.Bool
	// leaked counts buffers the VF still held after the channel drained
	// its queues (a bug if ever nonzero; tests check it).
	leaked atomic.Int64
}

func (t *vfTask) Name() string { return t.ch.Name() }

func (t *vfTask) Poll() int {
	if t.down.Load() {
		if t.port.recovering.Load() {
			return 0 // the bring-up goroutine is at it
		}
		t.down.Store(false)
		return t.ch.Poll() // starts the queues
	}
	if t.polls++; t.polls%resetCheckEvery != 0 || !t.port.resetPending() {
		return t.ch.Poll()
	}
	t.down.Store(true)
	if err := t.ch.RestartNIC(); err != nil {
		t.log.Error("stopping the channel's VF queues after a reset by the PF", zap.Error(err))
	}
	// The channel took every buffer back: none may be left (the lcore
	// owns the queues, so it may look).
	vf := t.port.vf
	if n := vf.RxQueue(0).Posted() + vf.TxQueue(0).InFlight(); n != 0 {
		t.leaked.Add(int64(n))
		t.log.Error("VF queue held buffers after the channel drained it; they are lost to the guest", zap.Int("buffers", n))
	}
	t.port.startBringUp(t.log)
	return 0
}
