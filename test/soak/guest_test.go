//go:build soak

package soak

import (
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"runtime"
	"sync"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// guestDriver plays one guest for the whole soak, on one goroutine: a
// poll-mode virtio-net driver on sim/guest that echoes every frame it
// receives (MACs swapped, as testpmd's macswap), so that zcnet's generator
// traffic crosses zcnet both ways, and that between rounds acts on the
// chaos schedule (chaos_test.go).
//
// It keeps the guest's side of the frame accounting exact: frames read and
// echoed, frames it had no transmit buffer for, and, whenever it throws an
// instance away, the frames zcnet had delivered into its receive ring that
// it never read and the frames it had made available for transmission
// that zcnet never took. A truncated instance's memory cannot be read (the
// guest would fault on it too), so what it held is bounded instead.
type guestDriver struct {
	name     string
	socket   string
	zcnet    *zcnetProcess // checked alive after whatever the guest did
	rng      *rand.Rand
	truncate bool            // truncate-memory is among the misbehaviours
	only     map[string]bool // SOAK_ACTIONS: the only actions to take (nil: all)

	cmds chan guestCommand
	done chan struct{} // closed when run returns
	err  error         // why run stopped before it was told to

	inst       *instance
	pending    *step // the one step of an action still to come
	chaos      bool
	nextAction time.Time
	nextProbe  time.Time
	finishing  bool // the soak is over: when zcnet goes, account and stop
	badHeaders int  // echoed frames still to send with a garbage header
	holdRx     int  // receive descriptors the rounds leave free (for a garbage chain)
	emptySeen  int  // inst.g.EmptyRx already given back to the ring
	burst      []guest.RxFrame
	baseline   *baselineWait

	mu sync.Mutex
	st guestStats
}

// instance is one guest "boot": its memory, rings and, while connected,
// the socket to zcnet. Reconnecting keeps the instance (QEMU reconnecting
// to a restarted back end); a fresh instance is a rebooted VM.
type instance struct {
	g     *guest.Guest
	opts  guest.Options
	label string
	uc    *net.UnixConn // nil while disconnected

	truncated bool // its memory was taken away: never touch it again
	poisoned  bool // its rings hold garbage only a device reset clears
	garbageTx int  // garbage TX chains made available, never to be used
	extra     []*guest.Memory
}

// guestStats are a guest's figures over the whole soak.
type guestStats struct {
	Read          uint64 // frames read from the receive ring
	Echoed        uint64 // frames made available for transmission
	DroppedTxFull uint64 // frames read but not echoed: no transmit buffer
	UnreadAtEnd   uint64 // delivered into an instance's ring, never read
	UnsentAtEnd   uint64 // made available by an instance, never taken
	// TruncatedRing is the ring entries of truncated instances: the most
	// frames their memory can have taken along, unread or unsent.
	TruncatedRing uint64
	Truncations   int
	RxErrors      uint64 // frames the guest could not parse: must be 0
	FirstRxError  string

	Instances, Resumes, SessionsDropped int
	Actions                             map[string]int
	Outcomes                            map[string]map[string]int // kind -> outcome -> count
	Unexpected                          []string                  // outcomes that break zcnet's promises
}

// guestCommand is a request from the soak's main goroutine, handled
// between rounds.
type guestCommand struct {
	chaos    *bool        // start or stop acting
	baseline chan<- error // come back to the baseline instance; reply once frames flow
	finish   bool         // stop acting; when zcnet exits, account and return
}

// baselineWait is a pending baseline command: it is answered once the
// baseline instance has read baselineFrames.
type baselineWait struct {
	reply    chan<- error
	from     uint64
	deadline time.Time
}

const (
	// attachTimeout bounds one connection attempt (zcnet serves one
	// session at a time: a new connection waits until the previous
	// session is over, at most its message timeout) and every control
	// exchange.
	attachTimeout = 20 * time.Second
	// reconnectTimeout bounds how long zcnet may take to serve the guest
	// again after it went away.
	reconnectTimeout = 30 * time.Second
	// probeEvery is how often the guest checks that zcnet still holds its
	// connection (zcnet drops sessions on misbehaviour).
	probeEvery = 20 * time.Millisecond
	// baselineFrames is how many frames the baseline instance must read
	// before the soak measures: traffic flows again.
	baselineFrames = 2000
	// echoBurst is the most frames taken per round (testpmd's burst).
	echoBurst = 32
)

// baselineOptions are the instance the soak measures with at the warm-up
// point and at the end: 4 KiB receive buffers, so the NIC's 2 KiB buffers
// fit behind the virtio-net header and frames move zero-copy, and rings
// deep enough for the generator's bursts.
var baselineOptions = guest.Options{QueueSize: 2048, RxBufSize: 4096, TxBufSize: 2048}

func newGuestDriver(name string, z *zcnetProcess, seed uint64, truncate bool) *guestDriver {
	return &guestDriver{
		name: name, socket: z.socket, zcnet: z, truncate: truncate,
		rng:   rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		cmds:  make(chan guestCommand, 4),
		done:  make(chan struct{}),
		burst: make([]guest.RxFrame, 0, echoBurst),
		st:    guestStats{Actions: map[string]int{}, Outcomes: map[string]map[string]int{}},
	}
}

// start connects the baseline instance and starts the driver's goroutine.
func (d *guestDriver) start() error {
	in, err := newInstance(baselineOptions, "baseline")
	if err != nil {
		return err
	}
	if err := d.connect(in); err != nil {
		in.close()
		return err
	}
	d.adopt(in)
	go d.run()
	return nil
}

// run is the driver's loop: commands, the pending step, the connection
// probe, the next action, and an echo round, until finished or failed.
func (d *guestDriver) run() {
	defer close(d.done)
	idle := 0
	for {
		d.commands()
		if d.stopped() {
			return
		}
		now := time.Now()
		if p := d.pending; p != nil && !now.Before(p.at) {
			d.pending = nil
			p.run(false)
			if d.stopped() {
				return
			}
		}
		if now.After(d.nextProbe) {
			d.nextProbe = now.Add(probeEvery)
			if d.inst.uc != nil && (d.pending == nil || !d.pending.watchesConnection) && connClosed(d.inst.uc) {
				d.sessionLost()
				if d.stopped() {
					return
				}
			}
		}
		if d.chaos && d.pending == nil && now.After(d.nextAction) {
			d.act()
			d.nextAction = time.Now().Add(d.randomDelay(300*time.Millisecond, 3*time.Second))
			if d.stopped() {
				return
			}
		}
		d.checkBaseline()
		if d.round() > 0 {
			idle = 0
			continue
		}
		// Nothing arrived: yield first, then back off to short sleeps so
		// an idle guest leaves the CPUs to zcnet.
		if idle++; idle < 256 {
			runtime.Gosched()
		} else {
			time.Sleep(20 * time.Microsecond)
		}
	}
}

// stopped reports whether run must return: the driver failed (its
// instance is freed) or, at the end, accounted for its last instance.
func (d *guestDriver) stopped() bool {
	if d.err != nil {
		if d.inst != nil {
			d.inst.close()
			d.inst = nil
		}
		if d.baseline != nil {
			d.baseline.reply <- d.err
			d.baseline = nil
		}
		return true
	}
	return d.inst == nil
}

// commands handles what the main goroutine asked for.
func (d *guestDriver) commands() {
	for {
		select {
		case c := <-d.cmds:
			switch {
			case c.chaos != nil:
				d.chaos = *c.chaos
				d.nextAction = time.Now()
				if !d.chaos {
					d.completePending()
				}
			case c.baseline != nil:
				d.chaos = false
				d.completePending()
				if err := d.replace(baselineOptions, "baseline"); err != nil {
					c.baseline <- err
					d.err = err
					return
				}
				d.baseline = &baselineWait{reply: c.baseline, from: d.stats().Read, deadline: time.Now().Add(reconnectTimeout)}
			case c.finish:
				d.chaos = false
				d.completePending()
				d.finishing = true
			}
		default:
			return
		}
	}
}

// checkBaseline answers a baseline command once frames flow.
func (d *guestDriver) checkBaseline() {
	b := d.baseline
	if b == nil {
		return
	}
	switch {
	case d.stats().Read >= b.from+baselineFrames:
		b.reply <- nil
	case time.Now().After(b.deadline):
		b.reply <- fmt.Errorf("%s: the baseline instance read %d frames in %v, want %d: traffic does not flow again",
			d.name, d.stats().Read-b.from, reconnectTimeout, baselineFrames)
	default:
		return
	}
	d.baseline = nil
}

// completePending runs the pending step (and those it schedules) now:
// chaos is stopping.
func (d *guestDriver) completePending() {
	for d.pending != nil {
		p := d.pending
		d.pending = nil
		p.run(true)
	}
}

// --- the echo round ------------------------------------------------------

// round echoes what arrived since the last round and refills the receive
// ring; it returns the number of frames read.
func (d *guestDriver) round() int {
	in := d.inst
	if in.truncated {
		return 0 // its memory is gone: touching it would fault here too
	}
	frames, err := in.g.ReceiveInPlace(0, d.burst[:0])
	if err != nil {
		d.rxError(err)
	}
	if len(frames) == 0 && in.g.EmptyRx == d.emptySeen {
		return 0
	}
	used, sent := 0, 0
	for i := range frames {
		used += frames[i].Buffers
		macSwap(frames[i].Frame)
		hdr := vhost.NetHeader{}
		if d.badHeaders > 0 {
			d.badHeaders--
			hdr = garbageNetHeader(d.rng)
		}
		if d.echo(in, hdr, frames[i].Frame) {
			sent++
		}
	}
	// The frames live in the receive buffers: publish the copies first,
	// then hand the buffers back, with those the device returned empty.
	_ = in.g.FlushTx(0)
	used += in.g.EmptyRx - d.emptySeen
	d.emptySeen = in.g.EmptyRx
	if d.holdRx > 0 && used > 0 {
		used--
		d.holdRx--
	}
	// A poisoned ring is left as it is: even a refill of nothing publishes
	// the avail index, which would overwrite a garbage one.
	if !in.poisoned {
		if err := in.refillRx(used); err != nil && !errors.Is(err, guest.ErrRingFull) {
			d.rxError(err)
		}
	}
	d.mu.Lock()
	d.st.Read += uint64(len(frames))
	d.st.Echoed += uint64(sent)
	d.st.DroppedTxFull += uint64(len(frames) - sent)
	d.mu.Unlock()
	return len(frames)
}

// echo queues one frame for transmission, waiting briefly for the device
// to complete earlier ones if the ring is full.
func (d *guestDriver) echo(in *instance, hdr vhost.NetHeader, f []byte) bool {
	for range 64 {
		err := in.g.QueueTx(0, hdr, f)
		if err == nil {
			return true
		}
		if !errors.Is(err, guest.ErrRingFull) || in.uc == nil {
			return false
		}
		_ = in.g.FlushTx(0)
		runtime.Gosched()
	}
	return false
}

func (d *guestDriver) rxError(err error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.st.RxErrors++
	if d.st.FirstRxError == "" {
		d.st.FirstRxError = fmt.Sprintf("%s instance %q: %v", d.name, d.inst.label, err)
	}
}

// macSwap exchanges the destination and source MAC addresses in place.
func macSwap(f []byte) {
	for i := 0; i < 6 && len(f) >= 12; i++ {
		f[i], f[6+i] = f[6+i], f[i]
	}
}

// --- instances and connections --------------------------------------------

func newInstance(opts guest.Options, label string) (*instance, error) {
	g, err := guest.New(opts)
	if err != nil {
		return nil, fmt.Errorf("guest instance %q: %w", label, err)
	}
	return &instance{g: g, opts: opts, label: label}, nil
}

// refillRx posts n receive buffers.
func (in *instance) refillRx(n int) error { return in.g.RefillRx(0, n) }

// close frees the instance: socket, memory, eventfds.
func (in *instance) close() {
	if in.g.FE != nil {
		_ = in.g.Disconnect()
	}
	in.uc = nil
	_ = in.g.Close()
	for _, m := range in.extra {
		_ = m.Close()
	}
	in.extra = nil
}

// disconnect closes the instance's socket: zcnet ends the session,
// stopping its rings and unmapping its memory.
func (in *instance) disconnect() {
	if in.g.FE != nil {
		_ = in.g.Disconnect()
	}
	in.uc = nil
}

// connect attaches in over a new connection, as QEMU does after a back
// end restart: the whole setup replayed, rings resumed at their used
// index. It retries while zcnet is still ending the previous session or
// refuses, until reconnectTimeout.
func (d *guestDriver) connect(in *instance) error {
	deadline := time.Now().Add(reconnectTimeout)
	for {
		err := d.attach(in)
		if err == nil {
			return nil
		}
		if !d.zcnet.alive() {
			return d.zcnet.exitError()
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("%s: zcnet did not serve instance %q again within %v: %w", d.name, in.label, reconnectTimeout, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// attach makes one connection attempt.
func (d *guestDriver) attach(in *instance) error {
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: d.socket, Net: "unix"})
	if err != nil {
		return err
	}
	// A zcnet that never answers must not hang the guest: the socket is
	// closed under the setup, which then fails.
	t := time.AfterFunc(attachTimeout, func() { uc.Close() })
	defer t.Stop()
	if err := in.g.Attach(uc); err != nil {
		in.disconnect()
		uc.Close()
		return err
	}
	in.uc = uc
	return nil
}

// adopt makes in the current instance and posts its receive buffers.
func (d *guestDriver) adopt(in *instance) {
	d.inst = in
	d.emptySeen = in.g.EmptyRx
	d.badHeaders = 0
	if err := in.refillRx(int(in.opts.QueueSize)); err != nil && !errors.Is(err, guest.ErrRingFull) {
		d.rxError(err)
	}
	d.mu.Lock()
	d.st.Instances++
	d.mu.Unlock()
}

// resume reconnects the current instance.
func (d *guestDriver) resume() error {
	d.inst.disconnect()
	if err := d.connect(d.inst); err != nil {
		return err
	}
	d.mu.Lock()
	d.st.Resumes++
	d.mu.Unlock()
	// Buffers zcnet gave back empty when the session ended are reposted
	// by the next round.
	return nil
}

// replace throws the current instance away and boots a fresh one with
// opts (on memfd memory if huge pages are short).
func (d *guestDriver) replace(opts guest.Options, label string) error {
	in, err := newInstance(opts, label)
	if err != nil && opts.Memory.Hugetlb {
		// Huge pages are shared with whatever else runs here; a guest
		// without them is still a guest.
		d.outcome("instance-hugetlbfs", "no huge pages: booted on memfd", true, err.Error())
		opts.Memory.Hugetlb = false
		in, err = newInstance(opts, label+" (memfd: no huge pages)")
	}
	if err != nil {
		return fmt.Errorf("%s: %w", d.name, err)
	}
	return d.replaceWith(in)
}

// replaceWith makes in the current instance in place of the old one. The
// new session being served proves the old one is over (zcnet serves one
// at a time), so the old rings are final: what they hold is accounted
// before the old memory is freed.
func (d *guestDriver) replaceWith(in *instance) error {
	old := d.inst
	old.disconnect()
	err := d.connect(in)
	d.retire(old)
	if err != nil {
		in.close()
		d.inst = nil
		return err
	}
	d.adopt(in)
	return nil
}

// retire accounts for what an instance whose session is over still holds
// and frees it.
func (d *guestDriver) retire(in *instance) {
	if in == nil {
		return
	}
	in.disconnect()
	d.mu.Lock()
	defer d.mu.Unlock()
	if in.truncated {
		d.st.TruncatedRing += uint64(in.g.Ring(0).Size()) + uint64(in.g.Ring(1).Size())
		in.close()
		return
	}
	unread := 0
	for {
		frames, err := in.g.ReceiveInPlace(0, d.burst[:0])
		if err != nil {
			d.st.RxErrors++
			if d.st.FirstRxError == "" {
				d.st.FirstRxError = fmt.Sprintf("%s retiring instance %q: %v", d.name, in.label, err)
			}
		}
		if len(frames) == 0 {
			break
		}
		unread += len(frames)
	}
	d.st.UnreadAtEnd += uint64(unread)
	// Every chain zcnet took from the transmit ring it gave back used
	// before the session ended (sent or dropped, counted either way),
	// also from a ring it found broken; the rest was never taken. The
	// garbage chains are not frames.
	tx := in.g.Ring(1)
	unsent := int(uint16(tx.AvailIdx()-tx.UsedIdx())) - in.garbageTx
	if unsent < 0 {
		d.st.Unexpected = append(d.st.Unexpected, fmt.Sprintf(
			"%s instance %q: zcnet used %d garbage transmit chains it should have refused", d.name, in.label, -unsent))
		unsent = 0
	}
	d.st.UnsentAtEnd += uint64(unsent)
	in.close()
}

// sessionLost handles zcnet closing the connection (not asked for by a
// step): the guest reconnects the same instance, or boots a fresh one if
// its rings are poisoned. At the end of the soak, zcnet exiting is how the
// guest learns it is over: it accounts for its last instance and lets go
// of it (run returns).
func (d *guestDriver) sessionLost() {
	in := d.inst
	in.disconnect()
	if d.finishing {
		// zcnet is shutting down: once it has exited, nothing touches
		// the rings any more.
		select {
		case <-d.zcnet.exited:
		case <-time.After(stopTimeout):
			d.err = fmt.Errorf("%s: zcnet closed the session at the end but did not exit within %v", d.name, stopTimeout)
		}
		d.retire(in)
		d.inst = nil
		return
	}
	d.mu.Lock()
	d.st.SessionsDropped++
	d.mu.Unlock()
	var err error
	if in.poisoned || in.truncated {
		err = d.replace(baselineOptions, "baseline")
	} else {
		err = d.resume()
	}
	if err != nil {
		d.err = err
	}
}

// connClosed reports whether the back end closed uc (or sent something
// unasked, which it never does on a healthy session: the stream is then
// unusable too). It peeks without blocking; a read deadline in the past
// would not do, as Go then fails the read without trying it.
func connClosed(uc *net.UnixConn) bool {
	rc, err := uc.SyscallConn()
	if err != nil {
		return true
	}
	var n int
	var rerr error
	var b [1]byte
	if err := rc.Read(func(fd uintptr) bool {
		n, _, rerr = unix.Recvfrom(int(fd), b[:], unix.MSG_PEEK|unix.MSG_DONTWAIT)
		return true // never wait
	}); err != nil {
		return true
	}
	return !errors.Is(rerr, unix.EAGAIN) || n > 0
}

// stats returns a copy of the figures.
func (d *guestDriver) stats() guestStats {
	d.mu.Lock()
	defer d.mu.Unlock()
	s := d.st
	s.Actions = cloneMap(d.st.Actions)
	s.Outcomes = map[string]map[string]int{}
	for k, v := range d.st.Outcomes {
		s.Outcomes[k] = cloneMap(v)
	}
	s.Unexpected = append([]string(nil), d.st.Unexpected...)
	return s
}

func cloneMap[K comparable, V any](m map[K]V) map[K]V {
	c := make(map[K]V, len(m))
	for k, v := range m {
		c[k] = v
	}
	return c
}

// outcome records what zcnet did about an action; an unexpected outcome
// (one that breaks what zcnet promises a hostile front end) fails the soak.
func (d *guestDriver) outcome(kind, what string, expected bool, detail string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.st.Outcomes[kind] == nil {
		d.st.Outcomes[kind] = map[string]int{}
	}
	d.st.Outcomes[kind][what]++
	if !expected && len(d.st.Unexpected) < 50 {
		d.st.Unexpected = append(d.st.Unexpected, fmt.Sprintf("%s %s (instance %q): %s: %s", d.name, kind, d.inst.label, what, detail))
	}
}

// send delivers a command to the driver, or fails if it has stopped.
func (d *guestDriver) send(c guestCommand) error {
	select {
	case d.cmds <- c:
		return nil
	case <-d.done:
		return d.stoppedError()
	}
}

// stoppedError says why the driver is not running.
func (d *guestDriver) stoppedError() error {
	if d.err != nil {
		return d.err
	}
	return fmt.Errorf("%s: the guest driver has stopped", d.name)
}
