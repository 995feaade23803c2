package guest

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/vhost"
)

// Options configure the test guest's virtio-net driver.
type Options struct {
	// Features the driver wants; the ones the back end offers are acked.
	// 0 means everything DefaultWanted lists.
	Features uint64
	// QueuePairs to set up (default 1).
	QueuePairs int
	// CtrlQueue also sets up the control queue (needs CTRL_VQ offered).
	CtrlQueue bool
	// QueueSize of every ring (default 256).
	QueueSize uint16
	Memory    MemoryOptions
	// RxBufSize is the size of each posted receive buffer (default 2048).
	RxBufSize int
	// RxChainDescs splits each receive buffer over that many descriptors
	// (default 1).
	RxChainDescs int
	// RxHeaderApart posts each receive buffer as two descriptors: the
	// virtio-net header alone, then the data rxDataOffset bytes into the
	// buffer, not adjacent to it (Linux's big-packet layout, used without
	// MRG_RXBUF when the guest takes TSO; Windows' layout).
	RxHeaderApart bool
	// TxIndirect sends frames through indirect descriptor tables.
	TxIndirect bool
	// TxSplit puts the virtio-net header and the frame (split in two) into
	// separate descriptors instead of one.
	TxSplit bool
	// TxBufSize is the size of each transmit buffer (default 16 KiB).
	TxBufSize int
	// DPDKOrder sets the device up in the order DPDK 22.11 virtio-user
	// does (SET_OWNER first, call fds before SET_FEATURES only, rings
	// enabled after all are kicked, no SET_VRING_ERR) instead of QEMU's.
	DPDKOrder bool
	// NoCallFD tells the back end "no call fd" (the driver polls).
	NoCallFD bool
	// Inflight negotiates INFLIGHT_SHMFD if offered and hands the back end
	// an inflight buffer before the rings start, as QEMU's vhost-user-blk
	// does (vhost_dev_prepare_inflight, then GET_INFLIGHT_FD on the first
	// start only, then SET_INFLIGHT_FD on every start): the buffer is kept
	// across Disconnect and Attach.
	Inflight bool
}

// DefaultWanted is what a Linux guest driver would take.
const DefaultWanted = vhost.FVersion1 | vhost.NetFMrgRxbuf | vhost.FEventIdx | vhost.FIndirectDesc |
	vhost.NetFMQ | vhost.NetFCtrlVQ | vhost.NetFStatus | vhost.NetFCsum | vhost.NetFGuestCsum |
	vhost.NetFHostTSO4 | vhost.NetFHostTSO6 | vhost.NetFGuestTSO4 | vhost.NetFGuestTSO6 | vhost.NetFMAC |
	vhost.NetFCtrlRx | vhost.NetFCtrlMACAddr | vhost.FProtocolFeatures

const wantedProtocol = vhost.ProtoFMQ | vhost.ProtoFReplyAck | vhost.ProtoFStatus |
	vhost.ProtoFConfigureMemSlots | vhost.ProtoFConfig | vhost.ProtoFResetDevice | vhost.ProtoFLogShmfd |
	vhost.ProtoFRARP

// queue is one virtqueue of the guest with its eventfds and buffers.
type queue struct {
	ring      *Ring
	kick      int
	call      int
	err       int
	bufGPA    uint64 // size slots of bufSize bytes, indexed by head
	bufSize   int
	slotOf    slotTable // head -> buffer slot
	freeSlots []int
	poisoned  map[int]bool // slots filled with rxPoison when returned (PoisonRx)
}

// Guest is a virtio-net driver on top of a vhost-user front end.
type Guest struct {
	opt      Options
	Mem      *Memory
	FE       *Frontend
	Features uint64 // acked virtio features
	Protocol uint64 // acked protocol features
	queues   []*queue
	// EmptyRx counts receive buffers the device returned with length 0.
	EmptyRx int
	// TrackRxWrites makes Receive record in RxWrites the guest memory
	// each used receive buffer says the device wrote (for dirty log
	// checks).
	TrackRxWrites bool
	RxWrites      []Extent
	// PoisonRx fills every receive buffer the driver gets back with a
	// pattern and checks it when the buffer is posted again: a device
	// that writes into a buffer after returning it (or returns a buffer
	// it still holds) is caught there (PostRx fails with
	// ErrWrittenAfterReturn).
	PoisonRx bool

	// bases are the ring positions GET_VRING_BASE last reported (StopRing),
	// which the next start of the ring sends back with SET_VRING_BASE as
	// QEMU does (its virtqueue state, migrated with the guest).
	bases map[int]uint32

	// InflightFD is the inflight buffer GET_INFLIGHT_FD returned (-1:
	// none yet), InflightSize its size; see Options.Inflight.
	InflightFD   int
	InflightSize uint64
}

// ErrWrittenAfterReturn means the device wrote into a receive buffer after
// it gave it back to the driver (see Guest.PoisonRx).
var ErrWrittenAfterReturn = errors.New("guest: device wrote into a receive buffer after returning it")

// rxPoison is the byte PoisonRx fills returned receive buffers with.
const rxPoison = 0xa5

// Extent is a range of guest physical memory.
type Extent struct{ GPA, Len uint64 }

// Packet is one received frame.
type Packet struct {
	Hdr   vhost.NetHeader
	Frame []byte
}

// Dial connects to a back end listening on path and sets the device up.
func Dial(path string, opt Options) (*Guest, error) {
	var uc *net.UnixConn
	var err error
	for range 100 { // the back end may still be starting
		uc, err = net.DialUnix("unix", nil, &net.UnixAddr{Name: path, Net: "unix"})
		if err == nil {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	if err != nil {
		return nil, fmt.Errorf("guest: connect to %s: %w", path, err)
	}
	g, err := New(opt)
	if err != nil {
		uc.Close()
		return nil, err
	}
	if err := g.Attach(uc); err != nil {
		g.Close()
		return nil, err
	}
	return g, nil
}

// New allocates the guest's memory and rings without connecting.
func New(opt Options) (*Guest, error) {
	if opt.Features == 0 {
		opt.Features = DefaultWanted
	}
	if opt.QueuePairs == 0 {
		opt.QueuePairs = 1
	}
	if opt.QueueSize == 0 {
		opt.QueueSize = 256
	}
	if opt.RxBufSize == 0 {
		opt.RxBufSize = 2048
	}
	if opt.TxBufSize == 0 {
		opt.TxBufSize = 16 << 10
	}
	if opt.RxChainDescs == 0 {
		opt.RxChainDescs = 1
	}
	if opt.Memory.Size == 0 {
		// Buffers, rings and indirect tables of every queue, plus slack;
		// doubled when split so that either region could hold them.
		n := uint64(2*opt.QueuePairs + 1)
		per := uint64(opt.QueueSize) * uint64(max(opt.RxBufSize, opt.TxBufSize)+16*maxIndirect+32)
		opt.Memory.Size = (n*(per+3*4096) + 2<<20) &^ (1<<20 - 1)
		if opt.Memory.Split {
			opt.Memory.Size *= 2
		}
	}
	mem, err := NewMemory(opt.Memory)
	if err != nil {
		return nil, err
	}
	g := &Guest{opt: opt, Mem: mem, InflightFD: -1}
	n := 2 * opt.QueuePairs
	if opt.CtrlQueue {
		n++
	}
	for i := range n {
		q, err := g.newQueue(i)
		if err != nil {
			g.Close()
			return nil, err
		}
		g.queues = append(g.queues, q)
	}
	return g, nil
}

func eventfd() (int, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
	if err != nil {
		return -1, fmt.Errorf("guest: eventfd: %w", err)
	}
	return fd, nil
}

func (g *Guest) newQueue(i int) (*queue, error) {
	newRing := NewRing
	if g.opt.Features&vhost.FRingPacked != 0 {
		newRing = NewPackedRing
	}
	r, err := newRing(g.Mem, g.opt.QueueSize, g.opt.Features&vhost.FEventIdx != 0)
	if err != nil {
		return nil, err
	}
	q := &queue{ring: r, kick: -1, call: -1, err: -1, slotOf: newSlotTable(int(g.opt.QueueSize))}
	for _, p := range []*int{&q.kick, &q.call, &q.err} {
		if *p, err = eventfd(); err != nil {
			q.close()
			return nil, err
		}
	}
	q.bufSize = g.opt.TxBufSize
	if i%2 == 0 && i < 2*g.opt.QueuePairs {
		q.bufSize = g.opt.RxBufSize
	}
	slots := int(g.opt.QueueSize)
	// Buffers go in the last region, so that with Split they live above
	// 4 GiB while the rings stay below.
	last := len(g.Mem.regions) - 1
	if q.bufGPA, err = g.Mem.AllocIn(last, uint64(slots*q.bufSize), 4096); err != nil {
		q.close()
		return nil, err
	}
	for s := slots - 1; s >= 0; s-- {
		q.freeSlots = append(q.freeSlots, s)
	}
	return q, nil
}

func (q *queue) close() { closeAll([]int{q.kick, q.call, q.err}) }

func closeAll(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// Close disconnects and frees everything.
func (g *Guest) Close() error {
	var errs []error
	if g.FE != nil {
		errs = append(errs, g.FE.Close())
	}
	for _, q := range g.queues {
		q.close()
	}
	if g.InflightFD >= 0 {
		unix.Close(g.InflightFD)
		g.InflightFD = -1
	}
	errs = append(errs, g.Mem.Close())
	return errors.Join(errs...)
}

// Disconnect drops the vhost-user connection but keeps memory and rings,
// as a QEMU whose back end went away does.
func (g *Guest) Disconnect() error {
	err := g.FE.Close()
	g.bases = nil
	g.FE = nil
	return err
}

// Attach runs QEMU 7.2's setup sequence on a fresh connection. After a
// Disconnect it resumes the rings where the device left them (SET_VRING_BASE
// = used->idx read back from guest memory, as QEMU's reconnect does).
func (g *Guest) Attach(uc *net.UnixConn) error {
	fe, err := NewFrontend(uc)
	if err != nil {
		uc.Close()
		return err
	}
	g.FE = fe
	if err := g.setup(); err != nil {
		return fmt.Errorf("guest: setting up the device: %w", err)
	}
	return nil
}

func (g *Guest) setup() error {
	if g.opt.DPDKOrder {
		return g.setupDPDK()
	}
	fe := g.FE
	offered, err := fe.U64(vhost.ReqGetFeatures)
	if err != nil {
		return err
	}
	g.Features = offered & g.opt.Features
	if err := g.checkLayout(); err != nil {
		return err
	}
	if offered&vhost.FProtocolFeatures != 0 {
		proto, err := fe.U64(vhost.ReqGetProtocolFeatures)
		if err != nil {
			return err
		}
		want := uint64(wantedProtocol)
		if g.opt.Inflight {
			want |= vhost.ProtoFInflightShmfd
		}
		g.Protocol = proto & want
		if _, err := fe.Request(vhost.ReqSetProtocolFeatures, vhost.EncodeU64(g.Protocol)); err != nil {
			return err
		}
		fe.EnableReplyAck(g.Protocol&vhost.ProtoFReplyAck != 0)
	}
	if g.Protocol&vhost.ProtoFMQ != 0 {
		pairs, err := fe.U64(vhost.ReqGetQueueNum)
		if err != nil {
			return err
		}
		if pairs < uint64(g.opt.QueuePairs) {
			return fmt.Errorf("back end has %d queue pairs, guest wants %d", pairs, g.opt.QueuePairs)
		}
	}
	if _, err := fe.Request(vhost.ReqSetOwner, nil); err != nil {
		return err
	}
	if _, err := fe.U64(vhost.ReqGetFeatures); err != nil {
		return err
	}
	for i, q := range g.queues {
		if err := g.sendCall(i, q); err != nil {
			return err
		}
		if _, err := fe.Request(vhost.ReqSetVringErr, vhost.EncodeVringFile(i, false), q.err); err != nil {
			return err
		}
	}
	if g.Features&vhost.FProtocolFeatures != 0 {
		for i := range g.queues {
			if err := g.SetEnable(i, false); err != nil {
				return err
			}
		}
	}
	if _, err := fe.Request(vhost.ReqSetFeatures, vhost.EncodeU64(g.Features)); err != nil {
		return err
	}
	if err := g.status(vhost.StatusAcknowledge | vhost.StatusDriver | vhost.StatusFeaturesOK); err != nil {
		return err
	}
	if err := g.setInflight(); err != nil {
		return err
	}
	if _, err := fe.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable(g.Mem.regions), repeat(g.Mem.fd, len(g.Mem.regions))...); err != nil {
		return err
	}
	for i, q := range g.queues {
		if err := g.startRing(i, q); err != nil {
			return err
		}
	}
	if g.Features&vhost.FProtocolFeatures != 0 {
		for i := range g.queues {
			if err := g.SetEnable(i, true); err != nil {
				return err
			}
		}
	}
	return g.status(vhost.StatusAcknowledge | vhost.StatusDriver | vhost.StatusFeaturesOK | vhost.StatusDriverOK)
}

// setInflight gets an inflight buffer from the back end the first time and
// sends it back (SET_INFLIGHT_FD) every time, as QEMU's vhost-user-blk does.
func (g *Guest) setInflight() error {
	if g.Protocol&vhost.ProtoFInflightShmfd == 0 {
		return nil
	}
	d := vhost.InflightDesc{NumQueues: uint16(len(g.queues)), QueueSize: g.opt.QueueSize}
	if g.InflightFD < 0 {
		p, fds, err := g.FE.RequestFDs(vhost.ReqGetInflightFD, vhost.EncodeInflight(d))
		if err != nil {
			return err
		}
		got, err := vhost.DecodeInflight(p)
		if err == nil && got.MmapSize == 0 && len(fds) == 0 {
			return nil // the back end has no buffer to give: no tracking, as QEMU goes on
		}
		if err != nil || got.MmapSize == 0 || len(fds) != 1 {
			closeAll(fds)
			return fmt.Errorf("guest: GET_INFLIGHT_FD gave %+v with %d descriptors (%v)", got, len(fds), err)
		}
		g.InflightFD, g.InflightSize = fds[0], got.MmapSize
	}
	d.MmapSize = g.InflightSize
	_, err := g.FE.Request(vhost.ReqSetInflightFD, vhost.EncodeInflight(d), g.InflightFD)
	return err
}

// checkLayout refuses a back end that does not offer the ring layout the
// guest laid its rings out in (New, before any negotiation): sending a
// packed ring's state to a device that uses split rings would only make it
// refuse SET_VRING_BASE with a less helpful message.
func (g *Guest) checkLayout() error {
	if g.opt.Features&vhost.FRingPacked != 0 && g.Features&vhost.FRingPacked == 0 {
		return errors.New("guest: rings are laid out packed, but the back end does not offer VIRTIO_F_RING_PACKED")
	}
	return nil
}

// setupDPDK is DPDK 22.11 net_virtio_user's sequence.
func (g *Guest) setupDPDK() error {
	fe := g.FE
	if _, err := fe.Request(vhost.ReqSetOwner, nil); err != nil {
		return err
	}
	offered, err := fe.U64(vhost.ReqGetFeatures)
	if err != nil {
		return err
	}
	g.Features = offered & g.opt.Features
	if err := g.checkLayout(); err != nil {
		return err
	}
	proto, err := fe.U64(vhost.ReqGetProtocolFeatures)
	if err != nil {
		return err
	}
	g.Protocol = proto & (vhost.ProtoFMQ | vhost.ProtoFReplyAck | vhost.ProtoFStatus)
	if _, err := fe.Request(vhost.ReqSetProtocolFeatures, vhost.EncodeU64(g.Protocol)); err != nil {
		return err
	}
	fe.EnableReplyAck(g.Protocol&vhost.ProtoFReplyAck != 0)
	for i, q := range g.queues {
		if err := g.sendCall(i, q); err != nil {
			return err
		}
	}
	if _, err := fe.Request(vhost.ReqSetFeatures, vhost.EncodeU64(g.Features)); err != nil {
		return err
	}
	if err := g.status(vhost.StatusAcknowledge | vhost.StatusDriver | vhost.StatusFeaturesOK); err != nil {
		return err
	}
	if _, err := fe.U64(vhost.ReqGetStatus); err != nil {
		return err
	}
	if _, err := fe.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable(g.Mem.regions), repeat(g.Mem.fd, len(g.Mem.regions))...); err != nil {
		return err
	}
	for i, q := range g.queues {
		if err := g.ringSetup(i, q); err != nil {
			return err
		}
	}
	for i := range g.queues {
		if err := g.SetEnable(i, true); err != nil {
			return err
		}
	}
	return g.status(vhost.StatusAcknowledge | vhost.StatusDriver | vhost.StatusFeaturesOK | vhost.StatusDriverOK)
}

func repeat(fd, n int) []int {
	fds := make([]int, n)
	for i := range fds {
		fds[i] = fd
	}
	return fds
}

func (g *Guest) sendCall(i int, q *queue) error {
	if g.opt.NoCallFD {
		_, err := g.FE.Request(vhost.ReqSetVringCall, vhost.EncodeVringFile(i, true))
		return err
	}
	_, err := g.FE.Request(vhost.ReqSetVringCall, vhost.EncodeVringFile(i, false), q.call)
	return err
}

func (g *Guest) status(s uint8) error {
	if g.Protocol&vhost.ProtoFStatus == 0 {
		return nil
	}
	if _, err := g.FE.U64(vhost.ReqGetStatus); err != nil {
		return err
	}
	_, err := g.FE.Request(vhost.ReqSetStatus, vhost.EncodeU64(uint64(s)))
	return err
}

func (g *Guest) startRing(i int, q *queue) error {
	if err := g.ringSetup(i, q); err != nil {
		return err
	}
	return g.sendCall(i, q)
}

// ringSetup sends SET_VRING_NUM, _BASE, _ADDR and _KICK for ring i.
func (g *Guest) ringSetup(i int, q *queue) error {
	fe := g.FE
	r := q.ring
	if _, err := fe.Request(vhost.ReqSetVringNum, vhost.EncodeVringState(vhost.VringState{Index: uint32(i), Num: uint32(r.Size())})); err != nil {
		return err
	}
	base, ok := g.bases[i]
	if !ok {
		base = r.Restart()
	}
	delete(g.bases, i)
	if _, err := fe.Request(vhost.ReqSetVringBase, vhost.EncodeVringState(vhost.VringState{Index: uint32(i), Num: base})); err != nil {
		return err
	}
	desc, avail, used := r.Addrs()
	if _, err := fe.Request(vhost.ReqSetVringAddr, vhost.EncodeVringAddr(vhost.VringAddr{Index: uint32(i), Desc: desc, Avail: avail, Used: used})); err != nil {
		return err
	}
	_, err := fe.Request(vhost.ReqSetVringKick, vhost.EncodeVringFile(i, false), q.kick)
	return err
}

// SetEnable sends SET_VRING_ENABLE for ring i.
func (g *Guest) SetEnable(i int, on bool) error {
	var n uint32
	if on {
		n = 1
	}
	_, err := g.FE.Request(vhost.ReqSetVringEnable, vhost.EncodeVringState(vhost.VringState{Index: uint32(i), Num: n}))
	return err
}

// StopRing sends GET_VRING_BASE and returns the device's position: the
// next avail index (split), or avail and used positions with their wrap
// counters (packed).
func (g *Guest) StopRing(i int) (uint32, error) {
	p, err := g.FE.Request(vhost.ReqGetVringBase, vhost.EncodeVringState(vhost.VringState{Index: uint32(i)}))
	if err != nil {
		return 0, err
	}
	s, err := vhost.DecodeVringState(p)
	if err != nil {
		return 0, err
	}
	if s.Index != uint32(i) {
		return 0, fmt.Errorf("guest: GET_VRING_BASE reply for vring %d, asked %d", s.Index, i)
	}
	if g.bases == nil {
		g.bases = map[int]uint32{}
	}
	g.bases[i] = s.Num
	return s.Num, nil
}

// Migrate moves the guest to the back end on uc as QEMU's live migration
// does: every ring is stopped on the current back end (GET_VRING_BASE, as
// the source QEMU does when the guest pauses), the connection is closed,
// and the new back end is set up with each ring starting where the old
// one reported (SET_VRING_BASE with the GET_VRING_BASE value: avail and
// used positions with their wrap counters on a packed ring), guest memory
// and the driver's state unchanged.
func (g *Guest) Migrate(uc *net.UnixConn) error {
	for i := range g.queues {
		if _, err := g.StopRing(i); err != nil {
			uc.Close()
			return fmt.Errorf("guest: stopping vring %d on the source: %w", i, err)
		}
	}
	err := g.FE.Close()
	g.FE = nil
	if err != nil {
		uc.Close()
		return err
	}
	return g.Attach(uc)
}

// ResumeRing restarts ring i after StopRing where the device left it
// (SET_VRING_NUM, _BASE = what GET_VRING_BASE reported, _ADDR, _KICK,
// _CALL, and ENABLE).
func (g *Guest) ResumeRing(i int) error {
	if err := g.startRing(i, g.queues[i]); err != nil {
		return err
	}
	if g.Features&vhost.FProtocolFeatures != 0 {
		return g.SetEnable(i, true)
	}
	return nil
}

// Ring returns virtqueue i's driver ring (RX of pair p is 2p, TX 2p+1).
func (g *Guest) Ring(i int) *Ring { return g.queues[i].ring }

// HdrLen is the virtio-net header size for the acked features.
func (g *Guest) HdrLen() int { return vhost.NetHeaderLen(g.Features) }

// Kick notifies the device about ring i if it asked for it.
func (g *Guest) publish(i int) error {
	q := g.queues[i]
	if q.ring.Publish() {
		return g.Kick(i)
	}
	return nil
}

// Kick writes ring i's kick eventfd.
func (g *Guest) Kick(i int) error {
	var one = [8]byte{1}
	_, err := unix.Write(g.queues[i].kick, one[:])
	return err
}

// CallFD is ring i's call eventfd, for tests that play a hostile front end
// with it (the device shares its file description).
func (g *Guest) CallFD(i int) int { return g.queues[i].call }

// Calls reads and resets ring i's call eventfd counter: how many times the
// device signalled since the last read.
func (g *Guest) Calls(i int) uint64 {
	return readNotification(g.queues[i].call)
}

// ErrSignalled reports whether the device wrote ring i's error eventfd.
func (g *Guest) ErrSignalled(i int) bool {
	return readNotification(g.queues[i].err) > 0
}

// notifyWait is how long the guest waits for a notification to arrive: the
// back end writes its eventfds from a goroutine of its own, not in the
// poll that decided to signal, so a signal lands shortly after.
const notifyWait = 100 * time.Millisecond

// readNotification returns eventfd fd's counter (resetting it), waiting up
// to notifyWait for it to become non-zero.
func readNotification(fd int) uint64 {
	fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
	if n, _ := unix.Poll(fds, int(notifyWait/time.Millisecond)); n != 1 {
		return 0
	}
	var b [8]byte
	if n, err := unix.Read(fd, b[:]); err != nil || n != 8 {
		return 0
	}
	return binary.LittleEndian.Uint64(b[:])
}

func (q *queue) takeSlot() (int, bool) {
	if len(q.freeSlots) == 0 {
		return 0, false
	}
	s := q.freeSlots[len(q.freeSlots)-1]
	q.freeSlots = q.freeSlots[:len(q.freeSlots)-1]
	return s, true
}

func (q *queue) slotGPA(s int) uint64 { return q.bufGPA + uint64(s*q.bufSize) }

// PostRx makes n receive buffers available on pair's RX queue.
func (g *Guest) PostRx(pair, n int) error {
	i := 2 * pair
	q := g.queues[i]
	for range n {
		s, ok := q.takeSlot()
		if !ok {
			return errors.Join(ErrRingFull, g.publish(i))
		}
		if err := g.checkPoison(q, s); err != nil {
			return errors.Join(err, g.publish(i))
		}
		bufs := g.rxChain(q, s, make([]Buf, 0, max(2, g.opt.RxChainDescs)))
		head, err := q.ring.Add(bufs, false)
		if err != nil {
			q.freeSlots = append(q.freeSlots, s)
			return errors.Join(err, g.publish(i))
		}
		q.slotOf.set(head, s)
	}
	return g.publish(i)
}

// rxChain appends to dst the descriptors of receive buffer slot s of q,
// laid out as the options say and as rxData reads them back: the header
// alone then the data (RxHeaderApart), or RxChainDescs equal pieces.
func (g *Guest) rxChain(q *queue, s int, dst []Buf) []Buf {
	gpa := q.slotGPA(s)
	if g.opt.RxHeaderApart {
		return append(dst, Buf{GPA: gpa, Len: uint32(g.HdrLen()), Write: true},
			Buf{GPA: gpa + rxDataOffset, Len: uint32(q.bufSize - rxDataOffset), Write: true})
	}
	parts := g.opt.RxChainDescs
	per := q.bufSize / parts
	for k := range parts {
		dst = append(dst, Buf{GPA: gpa + uint64(k*per), Len: uint32(per), Write: true})
	}
	return dst
}

// Transmit sends one frame with hdr on pair's TX queue.
func (g *Guest) Transmit(pair int, hdr vhost.NetHeader, frame []byte) error {
	i := 2*pair + 1
	q := g.queues[i]
	g.reclaim(q)
	hl := g.HdrLen()
	if hl+len(frame) > q.bufSize {
		return fmt.Errorf("guest: frame of %d bytes too big for a %d-byte TX buffer", len(frame), q.bufSize)
	}
	s, ok := q.takeSlot()
	if !ok {
		return ErrRingFull
	}
	gpa := q.slotGPA(s)
	b := g.Mem.Bytes(gpa, uint64(hl+len(frame)))
	if _, err := hdr.Encode(b, hl); err != nil {
		return err
	}
	copy(b[hl:], frame)
	bufs := []Buf{{GPA: gpa, Len: uint32(hl + len(frame))}}
	if g.opt.TxSplit {
		half := len(frame) / 2
		bufs = []Buf{{GPA: gpa, Len: uint32(hl)},
			{GPA: gpa + uint64(hl), Len: uint32(half)},
			{GPA: gpa + uint64(hl+half), Len: uint32(len(frame) - half)}}
	}
	head, err := q.ring.Add(bufs, g.opt.TxIndirect)
	if err != nil {
		q.freeSlots = append(q.freeSlots, s)
		return err
	}
	q.slotOf.set(head, s)
	return g.publish(i)
}

// reclaim frees the TX buffers the device has used.
func (g *Guest) reclaim(q *queue) int {
	n := 0
	for {
		head, _, ok := q.ring.Used()
		if !ok {
			return n
		}
		if s, ok := q.slotOf.take(head); ok {
			q.freeSlots = append(q.freeSlots, s)
		}
		n++
	}
}

// ReclaimTx frees used TX buffers of pair and returns how many.
func (g *Guest) ReclaimTx(pair int) int { return g.reclaim(g.queues[2*pair+1]) }

// Receive collects the frames the device delivered on pair's RX queue.
// Buffers are not reposted: call PostRx.
func (g *Guest) Receive(pair int) ([]Packet, error) {
	q := g.queues[2*pair]
	hl := g.HdrLen()
	var out []Packet
	for {
		head, length, ok := q.ring.Used()
		if !ok {
			return out, nil
		}
		data, err := g.rxData(q, head, length)
		if err != nil {
			return out, err
		}
		if len(data) == 0 {
			// A buffer the device gave back unwritten (it stopped the
			// ring while holding it): free, nothing to deliver.
			g.EmptyRx++
			continue
		}
		if len(data) < hl {
			return out, fmt.Errorf("guest: received %d bytes, shorter than the header", len(data))
		}
		h, _ := vhost.DecodeNetHeader(data, hl)
		frame := append([]byte(nil), data[hl:]...)
		nbuf := 1
		if g.Features&vhost.NetFMrgRxbuf != 0 {
			nbuf = int(h.NumBuffers)
		}
		for k := 1; k < nbuf; k++ {
			head, length, ok := q.ring.Used()
			if !ok {
				return out, fmt.Errorf("guest: packet announced %d buffers, only %d used", nbuf, k)
			}
			more, err := g.rxData(q, head, length)
			if err != nil {
				return out, err
			}
			frame = append(frame, more...)
		}
		out = append(out, Packet{Hdr: h, Frame: frame})
	}
}

// checkPoison checks, with PoisonRx, that receive buffer slot s of q still
// holds the pattern it was filled with when the device returned it.
func (g *Guest) checkPoison(q *queue, s int) error {
	if !q.poisoned[s] {
		return nil
	}
	delete(q.poisoned, s)
	b := g.Mem.Bytes(q.slotGPA(s), uint64(q.bufSize))
	for k, v := range b {
		if v != rxPoison {
			return fmt.Errorf("%w: buffer at %#x, byte %d is %#x", ErrWrittenAfterReturn, q.slotGPA(s), k, v)
		}
	}
	return nil
}

func (g *Guest) rxData(q *queue, head uint16, length uint32) ([]byte, error) {
	b, s, err := g.rxRead(q, head, length)
	if err == nil && g.PoisonRx {
		b = append([]byte(nil), b...)
		buf := g.Mem.Bytes(q.slotGPA(s), uint64(q.bufSize))
		for k := range buf {
			buf[k] = rxPoison
		}
		if q.poisoned == nil {
			q.poisoned = map[int]bool{}
		}
		q.poisoned[s] = true
	}
	return b, err
}

func (g *Guest) rxRead(q *queue, head uint16, length uint32) ([]byte, int, error) {
	s, ok := q.slotOf.take(head)
	if !ok {
		return nil, 0, fmt.Errorf("guest: device used unknown RX head %d", head)
	}
	q.freeSlots = append(q.freeSlots, s)
	if g.opt.RxHeaderApart { // rxData serves receive queues only
		hl := uint32(g.HdrLen())
		if length > hl+uint32(q.bufSize-rxDataOffset) {
			return nil, s, fmt.Errorf("guest: device wrote %d bytes into a chain of %d", length, hl+uint32(q.bufSize-rxDataOffset))
		}
		gpa := q.slotGPA(s)
		if g.TrackRxWrites {
			g.RxWrites = append(g.RxWrites, Extent{gpa, uint64(min(length, hl))})
			if length > hl {
				g.RxWrites = append(g.RxWrites, Extent{gpa + rxDataOffset, uint64(length - hl)})
			}
		}
		b := append([]byte(nil), g.Mem.Bytes(gpa, uint64(min(length, hl)))...)
		if length > hl {
			b = append(b, g.Mem.Bytes(gpa+rxDataOffset, uint64(length-hl))...)
		}
		return b, s, nil
	}
	if int(length) > q.bufSize {
		return nil, s, fmt.Errorf("guest: device wrote %d bytes into a %d-byte buffer", length, q.bufSize)
	}
	if g.TrackRxWrites && length > 0 {
		g.RxWrites = append(g.RxWrites, Extent{q.slotGPA(s), uint64(length)})
	}
	return g.Mem.Bytes(q.slotGPA(s), uint64(length)), s, nil
}

// rxDataOffset is where the data descriptor of an RxHeaderApart buffer
// starts: past the header with a gap, as Linux leaves one.
const rxDataOffset = 64

// Control sends one control-queue command and returns the ack byte once
// the device used it; poll drives the device meanwhile.
func (g *Guest) Control(class, cmd byte, data []byte, poll func()) (byte, error) {
	if !g.opt.CtrlQueue {
		return 0, errors.New("guest: no control queue configured")
	}
	i := 2 * g.opt.QueuePairs
	q := g.queues[i]
	s, ok := q.takeSlot()
	if !ok {
		return 0, ErrRingFull
	}
	defer func() { q.freeSlots = append(q.freeSlots, s) }()
	gpa := q.slotGPA(s)
	b := g.Mem.Bytes(gpa, uint64(3+len(data)))
	b[0], b[1] = class, cmd
	copy(b[2:], data)
	ackAt := 2 + len(data)
	b[ackAt] = 0xff
	if _, err := q.ring.Add([]Buf{{GPA: gpa, Len: uint32(2 + len(data))}, {GPA: gpa + uint64(ackAt), Len: 1, Write: true}}, false); err != nil {
		return 0, err
	}
	if err := g.publish(i); err != nil {
		return 0, err
	}
	for range 1000 {
		poll()
		if _, n, ok := q.ring.Used(); ok {
			if n != 1 {
				return 0, fmt.Errorf("guest: control command used with length %d", n)
			}
			return b[ackAt], nil
		}
	}
	return 0, errors.New("guest: device never completed the control command")
}

// ResetQueue recovers virtqueue i the way a driver does after the device
// reported NEEDS_RESET: stop it (GET_VRING_BASE), clear the ring and its
// buffers, and set it up again from index 0.
func (g *Guest) ResetQueue(i int) error {
	if _, err := g.StopRing(i); err != nil {
		return err
	}
	q := g.queues[i]
	q.ring.Reset()
	q.slotOf.reset()
	q.freeSlots = q.freeSlots[:0]
	for s := int(g.opt.QueueSize) - 1; s >= 0; s-- {
		q.freeSlots = append(q.freeSlots, s)
	}
	if err := g.startRing(i, q); err != nil {
		return err
	}
	if g.Features&vhost.FProtocolFeatures != 0 {
		return g.SetEnable(i, true)
	}
	return nil
}
