//go:build soak

package soak

import (
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// action is one thing a guest may do to zcnet at random: something a
// front end may legitimately do at any time (reconnect, change its memory
// table, stop a ring), or a misbehaviour zcnet must survive without
// harm to the process or the other guest.
type action struct {
	kind         string
	misbehaviour bool
	weight       int
	// usable says whether the action applies to the current instance
	// (nil: always).
	usable func(d *guestDriver) bool
	run    func(d *guestDriver)
}

// actions is the chaos menu. Weights favour what front ends do every day;
// each misbehaviour still comes up dozens of times in ten minutes.
var actions = []action{
	{kind: "reconnect-same-instance", weight: 8, run: (*guestDriver).reconnectSame},
	{kind: "reconnect-fresh-instance", weight: 8, run: (*guestDriver).reconnectFresh},
	{kind: "mem-table-resend", weight: 4, run: (*guestDriver).memTableResend},
	{kind: "mem-table-grow-shrink", weight: 4, run: (*guestDriver).memTableGrowShrink},
	{kind: "mem-region-add-remove", weight: 4, usable: hasMemSlots, run: (*guestDriver).memRegionAddRemove},
	{kind: "ring-stop-restart", weight: 6, run: (*guestDriver).ringStopRestart},
	{kind: "ring-disable-enable", weight: 5, run: (*guestDriver).ringDisableEnable},

	{kind: "garbage-rx-descriptor", misbehaviour: true, weight: 2, run: (*guestDriver).garbageRxDescriptor},
	{kind: "garbage-tx-descriptor", misbehaviour: true, weight: 2, run: (*guestDriver).garbageTxDescriptor},
	{kind: "avail-index-garbage", misbehaviour: true, weight: 2, run: (*guestDriver).availIndexGarbage},
	{kind: "bad-net-header", misbehaviour: true, weight: 3, run: (*guestDriver).badNetHeader},
	{kind: "unknown-request", misbehaviour: true, weight: 2, run: (*guestDriver).unknownRequest},
	{kind: "wrong-payload-size", misbehaviour: true, weight: 2, run: (*guestDriver).wrongPayloadSize},
	{kind: "oversize-message", misbehaviour: true, weight: 2, run: (*guestDriver).oversizeMessage},
	{kind: "garbage-bytes", misbehaviour: true, weight: 1, run: (*guestDriver).garbageBytes},
	{kind: "half-message-then-silence", misbehaviour: true, weight: 1, run: (*guestDriver).halfMessage},
	{kind: "too-many-fds", misbehaviour: true, weight: 2, run: (*guestDriver).tooManyFDs},
	{kind: "notify-fd-not-eventfd", misbehaviour: true, weight: 3, run: (*guestDriver).notifyFDNotEventfd},
	{kind: "fds-on-plain-request", misbehaviour: true, weight: 2, run: (*guestDriver).fdsOnPlainRequest},
	{kind: "unsealed-memory-region", misbehaviour: true, weight: 2, run: (*guestDriver).unsealedRegion},
	{kind: "unsealed-memory-instance", misbehaviour: true, weight: 1, run: (*guestDriver).unsealedInstance},
	{kind: "bad-memory-table", misbehaviour: true, weight: 2, run: (*guestDriver).badMemoryTable},
	{kind: "truncate-memory", misbehaviour: true, weight: 2, usable: func(d *guestDriver) bool { return d.truncate }, run: (*guestDriver).truncateMemory},
}

func hasMemSlots(d *guestDriver) bool { return d.inst.g.Protocol&vhost.ProtoFConfigureMemSlots != 0 }

// isMisbehaviour reports whether kind is a misbehaviour.
func isMisbehaviour(kind string) bool {
	i := slices.IndexFunc(actions, func(a action) bool { return a.kind == kind })
	return i >= 0 && actions[i].misbehaviour
}

// act picks and starts one action.
func (d *guestDriver) act() {
	if d.inst.uc == nil {
		if err := d.resume(); err != nil {
			d.err = err
		}
		return
	}
	var usable []action
	total := 0
	for _, a := range actions {
		if (a.usable == nil || a.usable(d)) && (d.only == nil || d.only[a.kind]) {
			usable = append(usable, a)
			total += a.weight
		}
	}
	if total == 0 {
		return
	}
	n := d.rng.IntN(total)
	for _, a := range usable {
		if n -= a.weight; n < 0 {
			d.mu.Lock()
			d.st.Actions[a.kind]++
			d.mu.Unlock()
			a.run(d)
			break
		}
	}
	if !d.zcnet.alive() {
		d.err = d.zcnet.exitError()
	}
}

// step is the rest of an action, run by the driver's loop later on (a
// ring resumed, a region removed, a dropped session checked), so that
// traffic keeps flowing in between.
type step struct {
	at time.Time
	// watchesConnection: the step expects zcnet to close the connection
	// and checks for it itself.
	watchesConnection bool
	// run does the step; forced means chaos is stopping and it must
	// complete now (it may block, running echo rounds while it waits).
	run func(forced bool)
}

func (d *guestDriver) later(after time.Duration, watches bool, run func(forced bool)) {
	d.pending = &step{at: time.Now().Add(after), watchesConnection: watches, run: run}
}

// randomDelay is a delay between lo and hi.
func (d *guestDriver) randomDelay(lo, hi time.Duration) time.Duration {
	return lo + time.Duration(d.rng.Int64N(int64(hi-lo)))
}

// --- control exchanges -------------------------------------------------------

// ack sends one request with REPLY_ACK asked for and returns the back
// end's status (0: done). err is a failed exchange: zcnet closed the
// connection (or did not answer within attachTimeout, after which the
// guest closes it).
func (in *instance) ack(req vhost.Request, payload []byte, fds ...int) (status uint64, err error) {
	err = in.guarded(func() error {
		c := in.g.FE.Conn()
		if err := c.WriteMessage(vhost.Header{Request: req, Flags: vhost.FlagVersion | vhost.FlagNeedReply}, payload, fds); err != nil {
			return err
		}
		m, err := c.ReadMessage()
		if err != nil {
			return err
		}
		closeFDs(m.FDs)
		if m.Request != req || m.Flags&vhost.FlagReply == 0 {
			return fmt.Errorf("reply to %v came as %v with flags %#x", req, m.Request, m.Flags)
		}
		status, err = vhost.DecodeU64(m.Payload)
		return err
	})
	return status, err
}

// guarded runs one control exchange on the connection, closing it if
// zcnet does not answer in time.
func (in *instance) guarded(exchange func() error) error {
	uc := in.uc
	if uc == nil {
		return net.ErrClosed
	}
	t := time.AfterFunc(attachTimeout, func() { uc.Close() })
	defer t.Stop()
	return exchange()
}

// deviceStatus is GET_STATUS.
func (in *instance) deviceStatus() (uint64, error) {
	var st uint64
	err := in.guarded(func() (err error) {
		st, err = in.g.FE.U64(vhost.ReqGetStatus)
		return err
	})
	return st, err
}

// expectRefused records the answer to a request zcnet must refuse while
// keeping the session. Dropping the session instead is allowed only where
// dropOK says so; accepting is a broken promise.
func (d *guestDriver) expectRefused(kind, detail string, status uint64, err error, dropOK bool) {
	switch {
	case err != nil:
		d.outcome(kind, "session dropped", dropOK, fmt.Sprintf("%s: %v", detail, err))
	case status == 0:
		d.outcome(kind, "accepted", false, detail+": zcnet accepted it")
	default:
		d.outcome(kind, "refused", true, detail)
	}
}

// expectAccepted records the answer to a request a well-behaved front end
// may send at any time.
func (d *guestDriver) expectAccepted(kind, detail string, status uint64, err error) {
	switch {
	case err != nil:
		d.outcome(kind, "session dropped", false, fmt.Sprintf("%s: %v", detail, err))
	case status != 0:
		d.outcome(kind, "refused", false, fmt.Sprintf("%s: status %d", detail, status))
	default:
		d.outcome(kind, "done", true, detail)
	}
}

// expectDrop checks that zcnet closes the connection within limit of now,
// while traffic flows; then the same instance reconnects.
func (d *guestDriver) expectDrop(kind string, limit time.Duration) {
	in, start := d.inst, time.Now()
	d.poll(10*time.Millisecond, true, func() bool {
		switch {
		case in.uc == nil || connClosed(in.uc):
			d.outcome(kind, "session dropped", true, "")
		case time.Since(start) > limit:
			d.outcome(kind, "session kept", false, fmt.Sprintf("zcnet still held the connection %v later", limit))
		default:
			return false
		}
		if in == d.inst {
			if err := d.resume(); err != nil {
				d.err = err
			}
		}
		return true
	})
}

// poll runs check every interval until it reports done: as later steps
// while the chaos goes on, or at once (echo rounds in between) when the
// chaos stops. watches says whether check watches the connection itself.
func (d *guestDriver) poll(interval time.Duration, watches bool, check func() (done bool)) {
	var step func(forced bool)
	step = func(forced bool) {
		for !check() {
			if !forced {
				d.later(interval, watches, step)
				return
			}
			d.roundsFor(interval)
		}
	}
	d.later(interval, watches, step)
}

// roundsFor runs echo rounds for a while (a forced step waiting).
func (d *guestDriver) roundsFor(t time.Duration) {
	for end := time.Now().Add(t); time.Now().Before(end); {
		if d.round() == 0 {
			time.Sleep(50 * time.Microsecond)
		}
	}
}

func closeFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

func repeatFD(fd, n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fds[i] = fd
	}
	return fds
}

// --- lifecycle -----------------------------------------------------------------

func (d *guestDriver) reconnectSame() {
	if err := d.resume(); err != nil {
		d.err = err
		return
	}
	d.outcome("reconnect-same-instance", "reconnected", true, "")
}

func (d *guestDriver) reconnectFresh() {
	opts, tags := d.randomOptions()
	if err := d.replace(opts, strings.Join(tags, " ")); err != nil {
		d.err = err
		return
	}
	for _, t := range tags {
		d.outcome("reconnect-fresh-instance", t, true, "")
	}
}

// randomOptions is a guest layout chosen at random among what real front
// ends use: QEMU's or DPDK's setup order, memfd or hugetlbfs memory in one
// or two regions (or addressed by user address, as DPDK does), ring sizes,
// mergeable buffers and event index on or off, indirect and split
// transmit chains, chained or header-apart receive buffers (Linux's
// layouts), buffers too small for zero copy (the copy path), no call fd.
func (d *guestDriver) randomOptions() (guest.Options, []string) {
	o := baselineOptions
	var tags []string
	chance := func(p float64, tag string) bool {
		if d.rng.Float64() < p {
			tags = append(tags, tag)
			return true
		}
		return false
	}
	o.QueueSize = []uint16{256, 1024, 2048, 4096}[d.rng.IntN(4)]
	tags = append(tags, fmt.Sprintf("ring %d", o.QueueSize))
	o.Memory.Hugetlb = chance(0.25, "hugetlbfs")
	if !chance(0.15, "identity-mapped") {
		o.Memory.Split = chance(0.2, "two regions")
	} else {
		o.Memory.IdentityMap = true
	}
	o.DPDKOrder = chance(0.25, "DPDK setup order")
	o.Features = guest.DefaultWanted
	mergeable := true
	if chance(0.2, "no mergeable buffers") {
		o.Features &^= vhost.NetFMrgRxbuf
		mergeable = false
	}
	if chance(0.2, "no event index") {
		o.Features &^= vhost.FEventIdx
	}
	o.TxIndirect = chance(0.2, "indirect TX")
	o.TxSplit = chance(0.2, "split TX chains")
	switch {
	case chance(0.2, "2 KiB RX buffers (copy path)"):
		o.RxBufSize = 2048
	case chance(0.15, "RX chains of 2"):
		o.RxChainDescs = 2
	case !mergeable && chance(0.3, "RX header apart"):
		o.RxHeaderApart = true
	}
	o.NoCallFD = chance(0.1, "no call fd")
	return o, tags
}

func (d *guestDriver) memTableResend() {
	in := d.inst
	regions := in.g.Mem.Regions()
	st, err := in.ack(vhost.ReqSetMemTable, vhost.EncodeMemTable(regions), repeatFD(in.g.Mem.FD(), len(regions))...)
	d.expectAccepted("mem-table-resend", "the same table again", st, err)
}

// extraRegion allocates a small memory the guest can add to its table and
// describes it at a guest address clear of the instance's regions.
func (in *instance) extraRegion(o guest.MemoryOptions) (*guest.Memory, vhost.RegionDesc, error) {
	o.Size = 2 << 20
	m, err := guest.NewMemory(o)
	if err != nil {
		return nil, vhost.RegionDesc{}, err
	}
	r := m.Regions()[0]
	var end uint64
	for _, mr := range in.g.Mem.Regions() {
		end = max(end, mr.GuestPhysAddr+mr.Size)
	}
	r.GuestPhysAddr = (end + 2<<30 - 1) &^ (1<<30 - 1)
	return m, r, nil
}

func (d *guestDriver) memTableGrowShrink() {
	const kind = "mem-table-grow-shrink"
	in, conn := d.inst, d.inst.g.FE
	extra, r, err := in.extraRegion(guest.MemoryOptions{})
	if err != nil {
		d.outcome(kind, "guest out of memory", true, err.Error())
		return
	}
	in.extra = append(in.extra, extra)
	main := in.g.Mem.Regions()
	fds := append(repeatFD(in.g.Mem.FD(), len(main)), extra.FD())
	st, err := in.ack(vhost.ReqSetMemTable, vhost.EncodeMemTable(append(main, r)), fds...)
	d.expectAccepted(kind, "a table with a region more", st, err)
	d.later(d.randomDelay(50*time.Millisecond, 600*time.Millisecond), false, func(bool) {
		if in.g.FE == conn {
			st, err := in.ack(vhost.ReqSetMemTable, vhost.EncodeMemTable(main), repeatFD(in.g.Mem.FD(), len(main))...)
			d.expectAccepted(kind, "the table without it", st, err)
		}
		in.dropExtra(extra)
	})
}

// dropExtra frees an extra memory once no table refers to it.
func (in *instance) dropExtra(m *guest.Memory) {
	if i := slices.Index(in.extra, m); i >= 0 {
		in.extra = slices.Delete(in.extra, i, i+1)
		_ = m.Close()
	}
}

func (d *guestDriver) memRegionAddRemove() {
	const kind = "mem-region-add-remove"
	in, conn := d.inst, d.inst.g.FE
	extra, r, err := in.extraRegion(guest.MemoryOptions{Hugetlb: d.rng.IntN(2) == 0})
	if err != nil {
		d.outcome(kind, "guest out of memory", true, err.Error())
		return
	}
	in.extra = append(in.extra, extra)
	st, err := in.ack(vhost.ReqAddMemReg, vhost.EncodeMemReg(r), extra.FD())
	d.expectAccepted(kind, "ADD_MEM_REG", st, err)
	d.later(d.randomDelay(50*time.Millisecond, 600*time.Millisecond), false, func(bool) {
		if in.g.FE == conn {
			st, err := in.ack(vhost.ReqRemMemReg, vhost.EncodeMemReg(r))
			d.expectAccepted(kind, "REM_MEM_REG", st, err)
		}
		in.dropExtra(extra)
	})
}

// ringStopRestart stops a ring as QEMU does when a VM pauses
// (GET_VRING_BASE) and restarts it where zcnet left it a while later.
func (d *guestDriver) ringStopRestart() {
	const kind = "ring-stop-restart"
	in, conn, i := d.inst, d.inst.g.FE, d.rng.IntN(2)
	err := in.guarded(func() error { _, err := in.g.StopRing(i); return err })
	if err != nil {
		d.outcome(kind, "session dropped", false, fmt.Sprintf("GET_VRING_BASE %d: %v", i, err))
		return
	}
	d.later(d.randomDelay(20*time.Millisecond, 500*time.Millisecond), false, func(bool) {
		if in.g.FE != conn {
			return // reconnected meanwhile: the setup restarted every ring
		}
		err := in.guarded(func() error { return in.g.ResumeRing(i) })
		d.expectAccepted(kind, fmt.Sprintf("ring %d restarted", i), 0, err)
	})
}

// ringDisableEnable takes a ring away from zcnet (SET_VRING_ENABLE 0)
// and gives it back.
func (d *guestDriver) ringDisableEnable() {
	const kind = "ring-disable-enable"
	in, conn, i := d.inst, d.inst.g.FE, uint32(d.rng.IntN(2))
	st, err := in.ack(vhost.ReqSetVringEnable, vhost.EncodeVringState(vhost.VringState{Index: i, Num: 0}))
	d.expectAccepted(kind, fmt.Sprintf("ring %d disabled", i), st, err)
	d.later(d.randomDelay(20*time.Millisecond, 500*time.Millisecond), false, func(bool) {
		if in.g.FE == conn {
			st, err := in.ack(vhost.ReqSetVringEnable, vhost.EncodeVringState(vhost.VringState{Index: i, Num: 1}))
			d.expectAccepted(kind, fmt.Sprintf("ring %d enabled", i), st, err)
		}
	})
}

// --- misbehaviour: the rings -------------------------------------------------

// garbageRxDescriptor makes a receive chain available whose buffer is not
// guest memory: zcnet must mark the queue broken (NEEDS_RESET), never post
// it to the NIC.
func (d *guestDriver) garbageRxDescriptor() {
	const kind = "garbage-rx-descriptor"
	in := d.inst
	var end uint64
	for _, r := range in.g.Mem.Regions() {
		end = max(end, r.GuestPhysAddr+r.Size)
	}
	variants := []struct {
		what string
		buf  guest.Buf
	}{
		{"a buffer outside every region", guest.Buf{GPA: end + 1<<30, Len: 4096, Write: true}},
		{"a buffer running past the last region", guest.Buf{GPA: end - 1024, Len: 1 << 20, Write: true}},
		{"a buffer wrapping the address space", guest.Buf{GPA: ^uint64(0) - 100, Len: 4096, Write: true}},
	}
	v := variants[d.rng.IntN(len(variants))]
	start := time.Now()
	var add func(forced bool)
	add = func(forced bool) {
		if in != d.inst {
			return
		}
		_, err := in.g.Ring(0).Add([]guest.Buf{v.buf}, false)
		if errors.Is(err, guest.ErrRingFull) && time.Since(start) < time.Second {
			// Every descriptor is posted: the next rounds keep one back.
			d.holdRx = 1
			if !forced {
				d.later(time.Millisecond, false, add)
				return
			}
			d.roundsFor(time.Millisecond)
			add(true)
			return
		}
		d.holdRx = 0
		if err != nil {
			d.outcome(kind, "no descriptor free", true, err.Error())
			return
		}
		_ = in.refillRx(0) // publishes and kicks
		in.poisoned = true
		d.expectNeedsReset(kind, v.what)
	}
	add(false)
}

// garbageTxDescriptor makes a transmit chain available that points
// outside guest memory or loops.
func (d *guestDriver) garbageTxDescriptor() {
	const kind = "garbage-tx-descriptor"
	in := d.inst
	r := in.g.Ring(1)
	base := in.g.Mem.Regions()[0].GuestPhysAddr
	var err error
	what := "a buffer below every region"
	if d.rng.IntN(2) == 0 {
		_, err = r.Add([]guest.Buf{{GPA: base - 4096, Len: 60}}, false)
	} else {
		what = "a chain looping back to its head"
		// Two descriptors, the second chained back to the first.
		var head uint16
		if head, err = r.Add([]guest.Buf{{GPA: base, Len: 64}, {GPA: base, Len: 64}}, false); err == nil {
			next := uint16(r.Desc(head)[14]) | uint16(r.Desc(head)[15])<<8
			tail := r.Desc(next)
			tail[12] |= guest.DescNext
			tail[14], tail[15] = byte(head), byte(head>>8)
		}
	}
	if err != nil {
		d.outcome(kind, "ring full", true, err.Error())
		return
	}
	in.garbageTx++
	_ = in.g.FlushTx(0)
	in.poisoned = true
	d.expectNeedsReset(kind, what)
}

// availIndexGarbage corrupts the receive ring's avail side: an index
// further ahead than the ring is long, or a head out of range.
func (d *guestDriver) availIndexGarbage() {
	const kind = "avail-index-garbage"
	in := d.inst
	r := in.g.Ring(0)
	what := "avail index a ring's length ahead"
	if d.rng.IntN(2) == 0 {
		r.PublishRaw(r.AvailIdx() + r.Size() + 1)
		_ = in.g.Kick(0)
	} else {
		r.Repost(r.Size() + 3)
		_ = in.refillRx(0)
		what = "head index out of range"
	}
	in.poisoned = true
	d.expectNeedsReset(kind, what)
}

// expectNeedsReset waits (echoing) for zcnet to report the device broken
// (VIRTIO_CONFIG_S_NEEDS_RESET), then resets it as a driver does: a fresh
// instance.
func (d *guestDriver) expectNeedsReset(kind, what string) {
	in, start := d.inst, time.Now()
	const limit = 3 * time.Second
	d.poll(50*time.Millisecond, false, func() bool {
		st, err := in.deviceStatus()
		switch {
		case err != nil:
			d.outcome(kind, "session dropped", true, what+": "+err.Error())
		case st&vhost.StatusNeedsReset != 0:
			d.outcome(kind, "NEEDS_RESET reported", true, what)
		case time.Since(start) > limit:
			d.outcome(kind, "not noticed", false, fmt.Sprintf("%s: device status %#x after %v", what, st, limit))
		default:
			return false
		}
		if in == d.inst {
			opts, tags := d.randomOptions()
			if err := d.replace(opts, strings.Join(tags, " ")); err != nil {
				d.err = err
			}
		}
		return true
	})
}

// badNetHeader sends the next few echoed frames behind a virtio-net
// header zcnet must not act on: checksum offsets outside the frame, GSO
// types and sizes that make no sense for it. Each is dropped under a
// counted cause or sent unharmed.
func (d *guestDriver) badNetHeader() {
	n := 1 + d.rng.IntN(4)
	d.badHeaders += n
	d.outcome("bad-net-header", "frames sent with it", true, "")
}

func garbageNetHeader(rng interface{ IntN(int) int }) vhost.NetHeader {
	switch rng.IntN(5) {
	case 0:
		return vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 2000, CsumOffset: 6}
	case 1:
		return vhost.NetHeader{Flags: vhost.NetHdrFNeedsCsum, CsumStart: 34, CsumOffset: 4000}
	case 2:
		return vhost.NetHeader{GSOType: 0x42, GSOSize: 100, HdrLen: 42}
	case 3:
		return vhost.NetHeader{GSOType: vhost.NetHdrGSOTCPv4, GSOSize: 0, HdrLen: 54}
	default:
		return vhost.NetHeader{GSOType: vhost.NetHdrGSOUDP, GSOSize: 8, HdrLen: 42}
	}
}

// --- misbehaviour: the protocol ------------------------------------------------

func (d *guestDriver) unknownRequest() {
	st, err := d.inst.ack(vhost.Request(0x3ff), nil)
	d.expectRefused("unknown-request", "request 0x3ff", st, err, true)
}

func (d *guestDriver) wrongPayloadSize() {
	st, err := d.inst.ack(vhost.ReqSetVringNum, []byte{1, 2, 3})
	d.expectRefused("wrong-payload-size", "SET_VRING_NUM with 3 bytes", st, err, true)
}

// rawWrite writes bytes that are not a well-formed message (with fds
// attached, if any) straight to the socket.
func (in *instance) rawWrite(b []byte, fds ...int) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	return in.guarded(func() error {
		_, _, err := in.uc.WriteMsgUnix(b, oob, nil)
		return err
	})
}

func header(req vhost.Request, flags, size uint32) []byte {
	b := make([]byte, vhost.HeaderSize)
	vhost.EncodeHeader(b, vhost.Header{Request: req, Flags: flags, Size: size})
	return b
}

// oversizeMessage announces a payload larger than any request has.
func (d *guestDriver) oversizeMessage() {
	const kind = "oversize-message"
	if err := d.inst.rawWrite(header(vhost.ReqSetFeatures, vhost.FlagVersion, vhost.MaxPayload+1+uint32(d.rng.IntN(1<<20)))); err != nil {
		d.outcome(kind, "session dropped", true, err.Error())
	}
	d.expectDrop(kind, 2*time.Second)
}

// garbageBytes sends random bytes: zcnet cannot resynchronise the stream
// and must drop the session, at once or after the message timeout.
func (d *guestDriver) garbageBytes() {
	const kind = "garbage-bytes"
	b := make([]byte, vhost.HeaderSize+d.rng.IntN(64))
	for i := range b {
		b[i] = byte(d.rng.IntN(256))
	}
	b[4] |= 0x2 // protocol version 2 or 3: never a valid header
	if err := d.inst.rawWrite(b); err != nil {
		d.outcome(kind, "session dropped", true, err.Error())
	}
	d.expectDrop(kind, 2*time.Second)
}

// halfMessage sends part of a header and then nothing: zcnet must drop
// the session after its message timeout (vhost.DefaultMessageTimeout),
// the guest's traffic flowing meanwhile.
func (d *guestDriver) halfMessage() {
	const kind = "half-message-then-silence"
	h := header(vhost.ReqSetVringEnable, vhost.FlagVersion, 8)
	if err := d.inst.rawWrite(h[:1+d.rng.IntN(vhost.HeaderSize-1)]); err != nil {
		d.outcome(kind, "session dropped", true, err.Error())
	}
	d.expectDrop(kind, vhost.DefaultMessageTimeout+5*time.Second)
}

// tooManyFDs sends a message carrying more descriptors than any request
// takes (more than vhost.MaxFDs): zcnet must drop the session and close
// every one of them (the end-of-soak descriptor count would show it).
func (d *guestDriver) tooManyFDs() {
	const kind = "too-many-fds"
	fds, err := eventfds(vhost.MaxFDs + 2)
	if err != nil {
		d.outcome(kind, "guest out of descriptors", true, err.Error())
		return
	}
	defer closeFDs(fds)
	msg := append(header(vhost.ReqSetVringCall, vhost.FlagVersion|vhost.FlagNeedReply, 8), vhost.EncodeVringFile(0, false)...)
	if err := d.inst.rawWrite(msg, fds...); err != nil {
		d.outcome(kind, "session dropped", true, err.Error())
	}
	d.expectDrop(kind, 2*time.Second)
}

func eventfds(n int) ([]int, error) {
	var fds []int
	for range n {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			closeFDs(fds)
			return nil, err
		}
		fds = append(fds, fd)
	}
	return fds, nil
}

// notifyFDNotEventfd hands a pipe, a memfd, a socket or /dev/null over as
// a kick, call or error notifier: zcnet must refuse it (a poll core
// writing a full pipe would block), keeping the session and the notifier
// it had.
func (d *guestDriver) notifyFDNotEventfd() {
	const kind = "notify-fd-not-eventfd"
	req := []vhost.Request{vhost.ReqSetVringKick, vhost.ReqSetVringCall, vhost.ReqSetVringErr}[d.rng.IntN(3)]
	ring := d.rng.IntN(2)
	fds, what, err := notEventfd(d.rng.IntN(4))
	if err != nil {
		d.outcome(kind, "guest out of descriptors", true, err.Error())
		return
	}
	defer closeFDs(fds)
	st, err := d.inst.ack(req, vhost.EncodeVringFile(ring, false), fds[0])
	d.expectRefused(kind, fmt.Sprintf("%v %d with a %s", req, ring, what), st, err, false)
}

// notEventfd opens a descriptor of some other kind; fds[0] is the one to
// send, the rest are to close with it.
func notEventfd(kind int) (fds []int, what string, err error) {
	switch kind {
	case 0:
		var p [2]int
		err = unix.Pipe2(p[:], unix.O_CLOEXEC)
		return p[:], "pipe", err
	case 1:
		fd, err := unix.MemfdCreate("soak-not-eventfd", unix.MFD_CLOEXEC)
		return []int{fd}, "memfd", err
	case 2:
		p, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		return p[:], "socket", err
	default:
		fd, err := unix.Open(os.DevNull, unix.O_RDWR|unix.O_CLOEXEC, 0)
		return []int{fd}, "/dev/null", err
	}
}

// fdsOnPlainRequest attaches descriptors to a request that takes none:
// refused, and the descriptors closed.
func (d *guestDriver) fdsOnPlainRequest() {
	fds, err := eventfds(2)
	if err != nil {
		d.outcome("fds-on-plain-request", "guest out of descriptors", true, err.Error())
		return
	}
	defer closeFDs(fds)
	st, err := d.inst.ack(vhost.ReqSetVringEnable, vhost.EncodeVringState(vhost.VringState{Index: 0, Num: 1}), fds...)
	d.expectRefused("fds-on-plain-request", "SET_VRING_ENABLE with 2 fds", st, err, true)
}

// --- misbehaviour: memory --------------------------------------------------------

// unsealedRegion offers a region of tmpfs memory that is not sealed
// against shrinking: the front end could truncate it under zcnet, so zcnet
// must refuse it and keep the table it had.
func (d *guestDriver) unsealedRegion() {
	const kind = "unsealed-memory-region"
	in := d.inst
	extra, r, err := in.extraRegion(guest.MemoryOptions{Unsealed: true})
	if err != nil {
		d.outcome(kind, "guest out of memory", true, err.Error())
		return
	}
	defer extra.Close()
	var st uint64
	if hasMemSlots(d) && d.rng.IntN(2) == 0 {
		st, err = in.ack(vhost.ReqAddMemReg, vhost.EncodeMemReg(r), extra.FD())
	} else {
		main := in.g.Mem.Regions()
		fds := append(repeatFD(in.g.Mem.FD(), len(main)), extra.FD())
		st, err = in.ack(vhost.ReqSetMemTable, vhost.EncodeMemTable(append(main, r)), fds...)
	}
	d.expectRefused(kind, "unsealed tmpfs memfd", st, err, false)
}

// unsealedInstance boots a guest whose whole memory is an unsealed tmpfs
// memfd: zcnet must refuse its memory table; the guest then comes back
// with the instance it had.
func (d *guestDriver) unsealedInstance() {
	const kind = "unsealed-memory-instance"
	opts := baselineOptions
	opts.QueueSize = 256
	opts.Memory.Unsealed = true
	bad, err := newInstance(opts, "unsealed")
	if err != nil {
		d.outcome(kind, "guest out of memory", true, err.Error())
		return
	}
	d.inst.disconnect()
	err = d.attach(bad)
	bad.close()
	if err != nil {
		d.outcome(kind, "refused", true, err.Error())
	} else {
		d.outcome(kind, "accepted", false, "zcnet served a guest whose memory could shrink under it")
	}
	if err := d.resume(); err != nil {
		d.err = err
	}
}

// badMemoryTable sends tables no front end can mean: a region past the
// end of its file, regions overlapping in guest addresses, a region of
// size zero. zcnet must refuse each and keep the table it had.
func (d *guestDriver) badMemoryTable() {
	in := d.inst
	main := in.g.Mem.Regions()
	r := main[0]
	var what string
	switch d.rng.IntN(3) {
	case 0:
		r.GuestPhysAddr += 1 << 40
		r.MmapOffset = 1 << 40
		what = "a region past the end of its file"
	case 1:
		r.UserAddr += 1 << 40
		what = "two regions at one guest address"
	default:
		r.GuestPhysAddr += 1 << 40
		r.Size = 0
		what = "a region of size zero"
	}
	regions := append(main, r)
	st, err := in.ack(vhost.ReqSetMemTable, vhost.EncodeMemTable(regions), repeatFD(in.g.Mem.FD(), len(regions))...)
	d.expectRefused("bad-memory-table", what, st, err, false)
}

// truncateMemory boots an instance on hugetlbfs memory, which cannot be
// sealed, lets traffic run, and then truncates the memory under zcnet. The
// access that faults must end that guest's session only: zcnet keeps
// running (and the other guest with it, in its own process here), counts
// the fault, and serves the guest's next instance.
func (d *guestDriver) truncateMemory() {
	const kind = "truncate-memory"
	opts := baselineOptions
	opts.QueueSize = 1024
	opts.Memory = guest.MemoryOptions{Hugetlb: true, Unsealed: true}
	in, err := newInstance(opts, "hugetlbfs, unsealed")
	if err != nil {
		d.outcome(kind, "no huge pages for the guest", true, err.Error())
		return
	}
	if err := d.replaceWith(in); err != nil {
		d.err = err
		return
	}
	d.later(d.randomDelay(100*time.Millisecond, time.Second), false, func(bool) {
		if in != d.inst {
			return
		}
		before, err := d.zcnet.snapshot()
		if err != nil {
			d.err = fmt.Errorf("%s: telemetry before truncating: %w", d.name, err)
			return
		}
		if err := unix.Ftruncate(in.g.Mem.FD(), 0); err != nil {
			d.outcome(kind, "truncate failed", false, err.Error())
			return
		}
		in.truncated = true
		d.mu.Lock()
		d.st.Truncations++
		d.mu.Unlock()
		d.expectContained(in, before.Ports[0].GuestMemoryFaults)
	})
}

// expectContained checks, after a truncation, that zcnet drops that
// session within limit, is still running and counted the fault; then the
// guest boots a fresh instance.
func (d *guestDriver) expectContained(in *instance, faultsBefore uint64) {
	const (
		kind  = "truncate-memory"
		limit = 10 * time.Second
	)
	start := time.Now()
	d.poll(10*time.Millisecond, true, func() bool {
		if !connClosed(in.uc) {
			if time.Since(start) <= limit {
				return false
			}
			d.outcome(kind, "session kept", false, fmt.Sprintf("zcnet still served the guest %v after its memory was truncated", limit))
		}
		after, err := d.zcnet.snapshot()
		switch {
		case err != nil || !d.zcnet.alive():
			d.outcome(kind, "zcnet died", false, fmt.Sprintf("telemetry: %v", err))
			d.err = fmt.Errorf("%s: zcnet did not survive a truncated guest memory: %w", d.name, d.zcnet.exitError())
			return true
		case after.Ports[0].GuestMemoryFaults <= faultsBefore:
			d.outcome(kind, "fault not counted", false, fmt.Sprintf("guest_memory_faults stayed %d", faultsBefore))
		default:
			d.outcome(kind, "session dropped, zcnet running, fault counted", true, "")
		}
		if err := d.replace(baselineOptions, "baseline"); err != nil {
			d.err = err
		}
		return true
	})
}
