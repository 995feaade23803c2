package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"sync/atomic"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/internal/memfault"
)

// Config describes one virtio-net device a port exposes over vhost-user.
type Config struct {
	// Name labels the device in logs (e.g. the socket path or port name).
	Name string
	// Features is the virtio feature set offered; 0 means DefaultFeatures.
	// It must be a subset of what the package supports; FProtocolFeatures
	// is always added.
	Features uint64
	// ProtocolFeatures offered; 0 means DefaultProtocolFeatures.
	ProtocolFeatures uint64
	// QueuePairs is the number of RX/TX queue pairs (GET_QUEUE_NUM); 0
	// means 1. More than one needs NetFMQ in Features.
	QueuePairs int
	// MAC and MTU fill the config space (GET_CONFIG, if offered).
	MAC net.HardwareAddr
	MTU uint16
	// FixedMAC refuses (VIRTIO_NET_ERR) a control-queue
	// VIRTIO_NET_CTRL_MAC_ADDR_SET to any address but MAC: a guest not
	// trusted to change the MAC the operator gave it.
	FixedMAC bool
	// Hook, if set, is told about every guest memory region mapped and
	// unmapped (for DMA mapping). If it also implements RingHook it is
	// told, synchronously, before any running ring stops.
	Hook MemoryHook
	// MemLimit caps the guest memory, in bytes, the front end may have
	// this device map (the sum of its memory table's region sizes); 0
	// means DefaultMemLimit. A table over it is refused before anything
	// is mapped.
	MemLimit uint64
	// Migration offers live migration: VHOST_F_LOG_ALL and the LOG_SHMFD
	// protocol feature, so that QEMU can have the device log every guest
	// page it writes (SET_LOG_BASE). The consumer of the queues must mark
	// what it writes into guest memory itself (DirtyLog); the device marks
	// its own writes (used rings, control queue acks). It also offers the
	// RARP protocol feature: after a migration the destination's QEMU asks
	// (SEND_RARP) for a RARP from the guest's MAC on the wire, so that
	// switches learn the guest's new port; the consumer sends it
	// (TakeRARP).
	Migration bool
	// Logger receives protocol events; nil means no logging.
	Logger *zap.Logger
}

// maxMemSlots is what GET_MAX_MEM_SLOTS reports: the memory table is
// scanned linearly, which stays cheap for a few dozen regions.
const maxMemSlots = 32

// vring is the control-plane state of one virtqueue.
type vring struct {
	num     uint16
	addr    VringAddr
	addrSet bool
	base    uint32 // split: next avail index; packed: avail|wrap<<15 | (used|wrap<<15)<<16
	kickFD  int
	kicked  bool      // SET_VRING_KICK arrived: start as soon as the ring is complete
	call    *notifier // nil: no call eventfd, the front end polls
	errN    *notifier
	enabled bool
	q       *Virtqueue // non-nil while started
}

// Device is the back end of one virtio-net device: the session state one
// front end builds up over its socket, and the virtqueues the data path
// polls. Control messages and the data path meet at the data-path lock:
// a poller holds it (LockDataPath) for one polling round; control messages
// that start or stop rings or change memory take it too, so a memory table
// is never unmapped under a poller.
type Device struct {
	cfg    Config
	log    *zap.Logger
	rings  RingHook    // cfg.Hook as a RingHook, or nil
	busy   atomic.Bool // a front end is connected
	broken atomic.Bool // a queue is broken: status reports NEEDS_RESET

	// conn is the connection being served, for Drop; dropped is why a
	// poller asked for it to be dropped. Guarded by connMu, which is
	// never held while waiting for anything.
	connMu  sync.Mutex
	conn    *Conn
	dropped error

	dp sync.Mutex // the data-path lock; guards everything below

	// session counts front-end sessions (and resets within one): it
	// changes whenever the memory and rings of the last session are gone.
	session       uint64
	features      uint64
	protoFeatures uint64
	owner         bool
	status        uint8
	mem           *MemoryTable
	retired       []Region // to release once the lock is dropped
	vrings        []vring
	ctrl          ctrlState
	// dirty is the front end's dirty log (SET_LOG_BASE), mapped until
	// replaced or the session ends; logging is on (activeLog) while it is
	// mapped and LOG_ALL is acked. logFD is SET_LOG_FD's eventfd.
	dirty     *DirtyLog
	activeLog *DirtyLog
	logFD     int
	// rarp is the MAC of the last SEND_RARP not yet taken (TakeRARP);
	// rarpPending says there is one.
	rarp        [6]byte
	rarpPending bool
	// inflight is the front end's inflight buffer (SET_INFLIGHT_FD),
	// mapped until replaced or the session ends; rings starting while it
	// is set track their chains in it. replyFDs are descriptors the
	// request being handled returns (GET_INFLIGHT_FD's buffer).
	inflight *inflightBuffer
	replyFDs []int
}

// NewDevice checks cfg and returns a device waiting for a front end.
func NewDevice(cfg Config) (*Device, error) {
	if cfg.Features == 0 {
		cfg.Features = DefaultFeatures
	}
	if cfg.ProtocolFeatures == 0 {
		cfg.ProtocolFeatures = DefaultProtocolFeatures
	}
	if cfg.QueuePairs == 0 {
		cfg.QueuePairs = 1
	}
	if cfg.MemLimit == 0 {
		cfg.MemLimit = DefaultMemLimit
	}
	if extra := cfg.Features &^ supportedFeatures; extra != 0 {
		return nil, fmt.Errorf("vhost: device %q: features %#x are not implemented; offer only bits of %#x", cfg.Name, extra, uint64(supportedFeatures))
	}
	if extra := cfg.ProtocolFeatures &^ supportedProtocolFeatures; extra != 0 {
		return nil, fmt.Errorf("vhost: device %q: protocol features %#x are not implemented", cfg.Name, extra)
	}
	if cfg.QueuePairs < 1 || cfg.QueuePairs > 128 {
		return nil, fmt.Errorf("vhost: device %q: %d queue pairs; use 1 to 128", cfg.Name, cfg.QueuePairs)
	}
	if cfg.QueuePairs > 1 && cfg.Features&NetFMQ == 0 {
		return nil, fmt.Errorf("vhost: device %q: %d queue pairs need the MQ feature offered", cfg.Name, cfg.QueuePairs)
	}
	if cfg.MAC != nil && len(cfg.MAC) != 6 {
		return nil, fmt.Errorf("vhost: device %q: MAC %v is not 6 bytes", cfg.Name, cfg.MAC)
	}
	cfg.Features |= FProtocolFeatures
	if cfg.Migration {
		cfg.Features |= FLogAll
		cfg.ProtocolFeatures |= ProtoFLogShmfd | ProtoFRARP
	}
	log := cfg.Logger
	if log == nil {
		log = zap.NewNop()
	}
	d := &Device{cfg: cfg, log: log.With(zap.String("device", cfg.Name)), logFD: -1}
	d.rings, _ = cfg.Hook.(RingHook)
	n := 2 * cfg.QueuePairs
	if cfg.Features&NetFCtrlVQ != 0 {
		n++
	}
	d.vrings = make([]vring, n)
	for i := range d.vrings {
		// resetSession closes the descriptors it finds; fd 0 is not ours.
		d.vrings[i] = vring{kickFD: -1}
	}
	d.resetSession()
	return d, nil
}

// Name is the device's label.
func (d *Device) Name() string { return d.cfg.Name }

// QueuePairs is the number of queue pairs the device offers.
func (d *Device) QueuePairs() int { return d.cfg.QueuePairs }

// LockDataPath is taken by the poller around one polling round of this
// device's queues; queues returned by RxQueue and TxQueue are valid only
// while it is held.
func (d *Device) LockDataPath() { d.dp.Lock() }

// UnlockDataPath ends a polling round. Every Push must be Flushed first.
func (d *Device) UnlockDataPath() { d.dp.Unlock() }

// Features returns the negotiated virtio features (with the data-path lock
// held, or for information).
func (d *Device) Features() uint64 { return d.features }

// NetHeaderLen is the virtio-net header size for the negotiated features.
func (d *Device) NetHeaderLen() int { return NetHeaderLen(d.features) }

// RxQueue returns the running, enabled receive queue of pair, or nil.
// The data-path lock must be held.
func (d *Device) RxQueue(pair int) *Virtqueue { return d.activeQueue(2 * pair) }

// TxQueue returns the running, enabled transmit queue of pair, or nil.
// The data-path lock must be held.
func (d *Device) TxQueue(pair int) *Virtqueue { return d.activeQueue(2*pair + 1) }

func (d *Device) activeQueue(i int) *Virtqueue {
	if i < 0 || i >= 2*d.cfg.QueuePairs {
		return nil
	}
	v := &d.vrings[i]
	if v.q == nil || v.q.broken || !d.ringEnabled(v) {
		return nil
	}
	// When this back end runs the control queue, only the pairs the driver
	// activated with VQ_PAIRS_SET carry traffic. (QEMU keeps the control
	// queue and uses SET_VRING_ENABLE instead.)
	if d.ctrlQueue() != nil && i/2 >= d.ctrl.activePairs {
		return nil
	}
	return v.q
}

// ringEnabled: without VHOST_USER_F_PROTOCOL_FEATURES, rings are enabled
// as soon as they start; with it, SET_VRING_ENABLE decides.
func (d *Device) ringEnabled(v *vring) bool {
	return v.enabled || d.features&FProtocolFeatures == 0
}

// Status is the device status byte as GET_STATUS reports it.
func (d *Device) Status() uint8 {
	d.dp.Lock()
	defer d.dp.Unlock()
	return d.statusLocked()
}

func (d *Device) statusLocked() uint8 {
	s := d.status
	if d.broken.Load() {
		s |= StatusNeedsReset
	}
	return s
}

// endSession resets the session and releases its memory.
func (d *Device) endSession() {
	d.dp.Lock()
	d.resetSession()
	retired := d.retired
	d.retired = nil
	d.dp.Unlock()
	d.releaseRetired(retired)
}

// Session identifies the front end's current session; it changes when
// the session ends or the front end resets the device, i.e. once none of
// the session's rings and memory is in use any more. Call it with the
// data-path lock held.
func (d *Device) Session() uint64 { return d.session }

// Drop ends the current front end's session on behalf of the data path,
// which found its guest memory gone (see memfault): the connection is
// closed, Serve returns reason, and the session is torn down as on a
// disconnect. It never blocks, so a poller may call it with the data-path
// lock held.
func (d *Device) Drop(reason error) {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	if d.conn == nil || d.dropped != nil {
		return
	}
	d.dropped = reason
	// Closing wakes the protocol goroutine's read; it is done off the
	// caller's goroutine so that not even the close can hold a poller.
	go d.conn.Close()
}

// serving records the connection Serve reads from (nil when it ends) and
// returns why the data path dropped the one that ended, if it did.
func (d *Device) serving(c *Conn) (dropped error) {
	d.connMu.Lock()
	defer d.connMu.Unlock()
	dropped, d.dropped = d.dropped, nil
	d.conn = c
	return dropped
}

// Connected reports whether a front end is attached.
func (d *Device) Connected() bool { return d.busy.Load() }

// resetSession forgets everything a front end set up (data-path lock held
// or device unused): rings stopped and their descriptors closed, memory
// retired (to be released through the hook once the lock is dropped),
// features and status cleared.
func (d *Device) resetSession() {
	d.session++
	for i := range d.vrings {
		v := &d.vrings[i]
		d.releaseRing(v)
		closeFDs([]int{v.kickFD})
		v.call.release()
		v.errN.release()
		*v = vring{kickFD: -1}
	}
	if d.mem != nil {
		d.retired = append(d.retired, d.mem.regions...)
	}
	d.mem = nil
	if err := d.dirty.unmap(); err != nil {
		d.log.Error("unmapping the dirty log", zap.Error(err))
	}
	d.dirty, d.activeLog = nil, nil
	if err := d.inflight.unmap(); err != nil {
		d.log.Error("unmapping the inflight buffer", zap.Error(err))
	}
	d.inflight = nil
	closeFDs([]int{d.logFD})
	d.logFD = -1
	d.features, d.protoFeatures, d.owner, d.status = 0, 0, false, 0
	d.rarpPending = false
	d.broken.Store(false)
	d.ctrl = ctrlState{activePairs: 1}
	if d.cfg.MAC != nil {
		copy(d.ctrl.mac[:], d.cfg.MAC)
	}
}

// queueBroken is called by a virtqueue, on the data path, the first time it
// sees a guest error.
func (d *Device) queueBroken(q *Virtqueue, reason error) {
	d.broken.Store(true)
	d.log.Warn("virtqueue broken by a guest error; the guest must reset the device",
		zap.Int("queue", q.index), zap.Error(reason))
}

// errFatal marks handler errors after which the connection is dropped:
// the front end waits for a reply we cannot give.
type errFatal struct{ error }

func (e errFatal) Unwrap() error { return e.error }

// needsReply lists the requests that are always answered with a payload.
func needsReply(r Request) bool {
	switch r {
	case ReqGetFeatures, ReqGetProtocolFeatures, ReqGetVringBase, ReqGetQueueNum,
		ReqGetConfig, ReqGetStatus, ReqGetMaxMemSlots, ReqGetInflightFD:
		return true
	}
	return false
}

// Dispatch handles one message and returns the reply payload, whether a
// reply must be sent, and a non-nil error if the connection must be
// dropped. It closes every descriptor of m that it did not keep, and those
// a reply would carry (GET_INFLIGHT_FD's buffer): DispatchFDs returns them.
func (d *Device) Dispatch(m *Message) (reply []byte, respond bool, fatal error) {
	reply, fds, respond, fatal := d.DispatchFDs(m)
	closeFDs(fds)
	return reply, respond, fatal
}

// DispatchFDs is Dispatch that also returns the descriptors the reply
// carries (as SCM_RIGHTS, with the payload); the caller owns and closes
// them once sent.
func (d *Device) DispatchFDs(m *Message) (reply []byte, fds []int, respond bool, fatal error) {
	defer closeFDs(m.FDs)
	prep := d.prepareMemory(m)
	d.dp.Lock()
	// REPLY_ACK counts if it was negotiated before the request (RESET_OWNER
	// clears it) or by it (SET_PROTOCOL_FEATURES).
	ack := d.protoFeatures&ProtoFReplyAck != 0
	resp, err := d.handleContained(m, prep)
	fds, d.replyFDs = d.replyFDs, nil
	d.applyLog()
	ack = ack || d.protoFeatures&ProtoFReplyAck != 0
	retired := d.retired
	d.retired = nil
	d.dp.Unlock()
	d.releaseRetired(retired)
	if err != nil {
		d.log.Warn("vhost-user request refused", zap.Stringer("request", m.Request), zap.Error(err))
	} else {
		d.log.Debug("vhost-user request", zap.Stringer("request", m.Request))
	}
	if err != nil {
		closeFDs(fds) // a reply that carries descriptors is one of success
		fds = nil
	}
	var fe errFatal
	if errors.As(err, &fe) {
		return nil, nil, false, fe
	}
	switch {
	case needsReply(m.Request):
		if err != nil {
			switch m.Request {
			case ReqGetConfig:
				return nil, nil, true, nil // an empty config reply means failure
			case ReqGetInflightFD:
				return inflightRefusal(m.Payload), nil, true, nil // mmap_size 0: no buffer
			}
			return nil, nil, false, errFatal{fmt.Errorf("%v: %w", m.Request, err)}
		}
		return resp, fds, true, nil
	case m.Flags&FlagNeedReply != 0 && ack:
		if err != nil {
			return EncodeU64(1), nil, true, nil
		}
		return EncodeU64(0), nil, true, nil
	case m.Request == ReqSetLogBase:
		// QEMU waits for a reply to SET_LOG_BASE (with LOG_SHMFD) without
		// asking for one, and takes any reply of that request for success;
		// DPDK sends it without a payload, as here. A refusal can only be
		// told by dropping the connection: QEMU's migration then fails
		// instead of running with a log we do not fill.
		if err != nil {
			return nil, nil, false, errFatal{fmt.Errorf("%v: %w", m.Request, err)}
		}
		return []byte{}, nil, true, nil
	}
	return nil, nil, false, nil
}

// takeFD removes fd i from m so the dispatcher does not close it.
func takeFD(m *Message, i int) int {
	fd := m.FDs[i]
	m.FDs[i] = -1
	return fd
}

func wantFDs(m *Message, n int) error {
	if len(m.FDs) != n {
		return fmt.Errorf("%w: %v carries %d, want %d", ErrBadFDCount, m.Request, len(m.FDs), n)
	}
	return nil
}

// ErrGuestMemoryFault means guest memory went away under an access: the
// front end truncated the file behind a region (or unmapped it some other
// way) while the region was in use. The session is dropped.
var ErrGuestMemoryFault = errors.New("guest memory went away under an access (the front end truncated or unmapped it)")

// handleContained is handle with guest memory faults contained: some
// requests read the rings (starting a ring reads its used index), and a
// front end that truncated its memory makes that fault. The fault ends
// the session instead of the process.
func (d *Device) handleContained(m *Message, prep preparedMemory) (resp []byte, err error) {
	prev := memfault.Enable()
	defer func() {
		memfault.Restore(prev)
		if v := recover(); v != nil {
			f, ok := memfault.FromPanic(v)
			if !ok || !d.InGuestMemory(f.Addr) {
				panic(v)
			}
			resp, err = nil, errFatal{fmt.Errorf("%v: %w: %w", m.Request, ErrGuestMemoryFault, f)}
		}
	}()
	return d.handle(m, prep)
}

// InGuestMemory reports whether host address addr lies in guest memory the
// device has mapped (data-path lock held).
func (d *Device) InGuestMemory(addr uintptr) bool {
	return d.mem.holds(addr) || (&MemoryTable{regions: d.retired}).holds(addr) || d.dirty.holds(addr) ||
		d.inflight.holds(addr)
}

// InDirtyLog reports whether host address addr lies in the front end's
// dirty log mapping (data-path lock held): a fault there is the front end
// truncating its log, to be contained like one on guest memory.
func (d *Device) InDirtyLog(addr uintptr) bool { return d.dirty.holds(addr) }

// DirtyLog returns the dirty log while the front end has logging on
// (LOG_ALL acked and a log mapped), nil otherwise. Call it with the
// data-path lock held; the log is valid until the lock is released. Every
// write into guest memory the caller makes (or has a device make) must be
// marked in it before the used entries that cover it are flushed.
func (d *Device) DirtyLog() *DirtyLog { return d.activeLog }

// handle applies one request with the data-path lock held.
func (d *Device) handle(m *Message, prep preparedMemory) ([]byte, error) {
	if err := checkSize(m); err != nil {
		return nil, err
	}
	switch m.Request {
	case ReqSetMemTable, ReqSetVringKick, ReqSetVringCall, ReqSetVringErr, ReqAddMemReg,
		ReqRemMemReg, ReqSetLogBase, ReqSetLogFD, ReqSetBackendReqFD, ReqSetInflightFD:
		// descriptors checked by the handler
	default:
		if err := wantFDs(m, 0); err != nil {
			return nil, err
		}
	}
	p := m.Payload
	switch m.Request {
	case ReqGetFeatures:
		return EncodeU64(d.cfg.Features), nil
	case ReqSetFeatures:
		return nil, d.setFeatures(u64(p))
	case ReqGetProtocolFeatures:
		return EncodeU64(d.cfg.ProtocolFeatures), nil
	case ReqSetProtocolFeatures:
		v := u64(p)
		if extra := v &^ d.cfg.ProtocolFeatures; extra != 0 {
			return nil, fmt.Errorf("front end acked protocol features %#x that were not offered", extra)
		}
		d.protoFeatures = v
		return nil, nil
	case ReqSetOwner:
		d.owner = true
		return nil, nil
	case ReqResetOwner:
		d.resetRings()
		return nil, nil
	case ReqResetDevice:
		if d.protoFeatures&ProtoFResetDevice == 0 {
			return nil, errors.New("RESET_DEVICE without the RESET_DEVICE protocol feature")
		}
		d.resetRings()
		return nil, nil
	case ReqSetMemTable:
		return nil, d.setMemTable(prep)
	case ReqSetLogBase:
		return nil, d.setLogBase(m)
	case ReqSetLogFD:
		return nil, d.setLogFD(m)
	case ReqSetVringNum:
		return nil, d.setVringNum(decodeVringState(p))
	case ReqSetVringAddr:
		return nil, d.setVringAddr(decodeVringAddr(p))
	case ReqSetVringBase:
		s := decodeVringState(p)
		v, err := d.stoppedVring(s.Index)
		if err != nil {
			return nil, err
		}
		if s.Num > 0xffff && d.features&FRingPacked == 0 {
			return nil, fmt.Errorf("vring %d base %#x does not fit a split ring index", s.Index, s.Num)
		}
		v.base = s.Num
		return nil, nil
	case ReqGetVringBase:
		s := decodeVringState(p)
		base, err := d.stopVring(s.Index)
		if err != nil {
			return nil, err
		}
		return EncodeVringState(VringState{Index: s.Index, Num: base}), nil
	case ReqSetVringKick, ReqSetVringCall, ReqSetVringErr:
		return nil, d.setVringFile(m)
	case ReqGetQueueNum:
		return EncodeU64(uint64(d.cfg.QueuePairs)), nil
	case ReqSetVringEnable:
		s := decodeVringState(p)
		v, err := d.vring(s.Index)
		if err != nil {
			return nil, err
		}
		if s.Num > 1 {
			return nil, fmt.Errorf("SET_VRING_ENABLE %d for vring %d: want 0 or 1", s.Num, s.Index)
		}
		if s.Num == 0 && v.q != nil && d.ringEnabled(v) && d.features&FProtocolFeatures != 0 {
			// The ring stops being handed to pollers: whoever holds its
			// buffers gives them back first.
			d.releaseRing(v)
		}
		v.enabled = s.Num == 1
		return nil, nil
	case ReqGetConfig, ReqSetConfig:
		return d.config(m)
	case ReqSetStatus:
		v := u64(p)
		if v > 0xff {
			return nil, fmt.Errorf("SET_STATUS %#x does not fit the status byte", v)
		}
		d.status = uint8(v)
		if v == 0 {
			d.broken.Store(false) // the driver reset the device
		}
		return nil, nil
	case ReqGetStatus:
		return EncodeU64(uint64(d.statusLocked())), nil
	case ReqSendRARP:
		return nil, d.sendRARP(p)
	case ReqGetInflightFD:
		return d.getInflightFD(m)
	case ReqSetInflightFD:
		return nil, d.setInflightFD(m)
	case ReqGetMaxMemSlots:
		if d.protoFeatures&ProtoFConfigureMemSlots == 0 {
			return nil, errors.New("GET_MAX_MEM_SLOTS without the CONFIGURE_MEM_SLOTS protocol feature")
		}
		return EncodeU64(maxMemSlots), nil
	case ReqAddMemReg:
		return nil, d.addMemReg(prep)
	case ReqRemMemReg:
		return nil, d.remMemReg(m)
	}
	return nil, fmt.Errorf("request %v is not implemented by this back end", m.Request)
}

// sendRARP handles SEND_RARP: the front end (QEMU, on the destination of a
// migration, for a guest without GUEST_ANNOUNCE) asks for a RARP from the
// guest's MAC, payload bytes 0-5, so that the switches on the wire learn
// the guest's new port. The request is kept for the consumer of the
// queues, which sends the frame (TakeRARP); a second one before it is
// taken replaces the first.
func (d *Device) sendRARP(p []byte) error {
	if d.protoFeatures&ProtoFRARP == 0 {
		return errors.New("SEND_RARP without the RARP protocol feature")
	}
	var mac [6]byte
	copy(mac[:], p)
	if mac[0]&1 != 0 || mac == ([6]byte{}) {
		return fmt.Errorf("SEND_RARP for %v: not a unicast address", net.HardwareAddr(mac[:]))
	}
	d.rarp, d.rarpPending = mac, true
	d.log.Info("SEND_RARP: announcing the guest's MAC on the wire", zap.Stringer("mac", net.HardwareAddr(mac[:])))
	return nil
}

// TakeRARP returns the MAC of a SEND_RARP the front end asked for and not
// yet taken, and forgets it: the caller puts a RARP from that MAC on the
// wire (see AppendRARP). Call it with the data-path lock held.
func (d *Device) TakeRARP() (mac [6]byte, ok bool) {
	mac, ok = d.rarp, d.rarpPending
	d.rarpPending = false
	return mac, ok
}

// RARPFrameLen is the length of a RARP frame (without FCS): the Ethernet
// minimum, as QEMU's and DPDK's announcements are.
const RARPFrameLen = 60

// AppendRARP appends to b the frame QEMU announces a migrated guest with
// (qemu_announce_self, DPDK's make_rarp_packet): a broadcast RARP request
// (EtherType 0x8035, opcode 3 "request reverse") from mac, with mac as
// sender and target hardware address and no protocol addresses, padded to
// RARPFrameLen.
func AppendRARP(b []byte, mac [6]byte) []byte {
	b = append(b, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff)
	b = append(b, mac[:]...)
	b = append(b, 0x80, 0x35, // RARP
		0x00, 0x01, // hardware: Ethernet
		0x08, 0x00, // protocol: IPv4
		6, 4, // address lengths
		0x00, 0x03) // request reverse
	b = append(b, mac[:]...)
	b = append(b, 0, 0, 0, 0)
	b = append(b, mac[:]...)
	b = append(b, 0, 0, 0, 0)
	for range RARPFrameLen - 42 {
		b = append(b, 0)
	}
	return b
}

func (d *Device) setFeatures(v uint64) error {
	if extra := v &^ d.cfg.Features; extra != 0 {
		return fmt.Errorf("front end acked features %#x that were not offered", extra)
	}
	for i := range d.vrings {
		if d.vrings[i].q != nil && (d.features^v)&^uint64(FLogAll) != 0 {
			// Only LOG_ALL may change under running rings (QEMU turns
			// logging on and off around a migration); anything else is a
			// confused front end.
			return fmt.Errorf("SET_FEATURES %#x while vring %d runs with %#x", v, i, d.features)
		}
	}
	if v&FLogAll != 0 && d.dirty != nil && d.dirty.size < logBytesFor(d.mem) {
		return fmt.Errorf("SET_FEATURES with LOG_ALL: %w: %d bytes, the memory table needs %d", ErrLogTooSmall, d.dirty.size, logBytesFor(d.mem))
	}
	d.features = v
	return nil
}

func (d *Device) vring(index uint32) (*vring, error) {
	if index >= uint32(len(d.vrings)) {
		return nil, fmt.Errorf("vring index %d out of range (device has %d)", index, len(d.vrings))
	}
	return &d.vrings[index], nil
}

func (d *Device) stoppedVring(index uint32) (*vring, error) {
	v, err := d.vring(index)
	if err == nil && v.q != nil {
		err = fmt.Errorf("vring %d is running; stop it with GET_VRING_BASE first", index)
	}
	return v, err
}

func (d *Device) setVringNum(s VringState) error {
	v, err := d.stoppedVring(s.Index)
	if err != nil {
		return err
	}
	if s.Num == 0 || s.Num > MaxQueueSize || s.Num&(s.Num-1) != 0 {
		return fmt.Errorf("vring %d size %d: want a power of two up to %d", s.Index, s.Num, MaxQueueSize)
	}
	v.num = uint16(s.Num)
	return d.startVring(int(s.Index), v)
}

func (d *Device) setVringAddr(a VringAddr) error {
	v, err := d.vring(a.Index)
	if err != nil {
		return err
	}
	if a.Flags&^uint32(VringFLog) != 0 {
		return fmt.Errorf("SET_VRING_ADDR for vring %d: unknown flags %#x", a.Index, a.Flags)
	}
	if err := d.checkLogAddr(a, v.num); err != nil {
		return err
	}
	v.addr, v.addrSet = a, true
	if v.q == nil {
		return d.startVring(int(a.Index), v)
	}
	{
		// Re-translate a running ring (DPDK does this when logging is
		// toggled). If the new addresses are bad the ring is broken.
		if err := v.q.translate(d.queueConfig(int(a.Index), v)); err != nil {
			v.q.fail(err)
			return err
		}
	}
	return nil
}

func (d *Device) queueConfig(i int, v *vring) QueueConfig {
	c := QueueConfig{Index: i, Size: v.num, Desc: v.addr.Desc, Avail: v.addr.Avail,
		Used: v.addr.Used, LastAvail: uint16(v.base), EventIdx: d.features&FEventIdx != 0,
		Packed: d.features&FRingPacked != 0,
		// Receive queues: even indexes below the control queue's.
		ReadAhead: i%2 == 0 && i < 2*d.cfg.QueuePairs}
	if c.Packed {
		// Front ends that know only the avail position send 0 in the
		// upper half: the used position is then the same.
		c.LastUsed = uint16(v.base >> 16)
		if v.base>>16 == 0 {
			c.LastUsed = c.LastAvail
		}
	}
	return c
}

// startVring starts a kicked ring once everything it needs has arrived.
// Front ends differ in order (QEMU sends CALL after KICK, DPDK may send
// ENABLE last), so readiness is re-checked after every message that can
// complete a ring; a ring that is merely incomplete is not an error.
func (d *Device) startVring(i int, v *vring) error {
	if v.q != nil || !v.kicked || d.mem == nil || v.num == 0 || !v.addrSet {
		return nil
	}
	if err := d.checkLogAddr(v.addr, v.num); err != nil {
		return err
	}
	q, err := NewSplitQueue(d.mem, d.queueConfig(i, v))
	if err != nil {
		return err
	}
	if err := d.trackInflight(i, q); err != nil {
		return err
	}
	q.call, q.errN, q.onBroken = v.call, v.errN, d.queueBroken
	v.q = q
	d.log.Debug("vring started", zap.Int("vring", i), zap.Uint16("size", v.num), zap.Uint32("base", v.base))
	return nil
}

// startReady starts every kicked ring that has become complete.
func (d *Device) startReady() error {
	var errs []error
	for i := range d.vrings {
		errs = append(errs, d.startVring(i, &d.vrings[i]))
	}
	return errors.Join(errs...)
}

// stopVring stops a ring (GET_VRING_BASE) and returns the next avail index
// it would have consumed. Everything consumed before it has been published
// in the used ring: pollers flush before releasing the data-path lock.
func (d *Device) stopVring(index uint32) (uint32, error) {
	v, err := d.vring(index)
	if err != nil {
		return 0, err
	}
	if v.q != nil {
		// The base must count every popped chain as used: the ring hook
		// takes back (and pushes) what the NIC still holds before we read
		// it.
		d.releaseRing(v)
		v.base = uint32(v.q.lastAvail)
		if v.q.pk.on {
			v.base = v.q.PackedBase()
		}
		if v.q.infl != nil {
			v.base = v.q.infl.availBase(v.q)
		}
		c := v.q.Counters()
		if d.activeLog != nil {
			// Only at debug level: listing a large guest's pages is work
			// done with the data-path lock held.
			if ce := d.log.Check(zap.DebugLevel, "dirty log: guest pages the device could have written while logging"); ce != nil {
				ce.Write(zap.Uint32("vring", index), zap.String("pages", d.activeLog.Touched()))
			}
		}
		d.log.Debug("vring stopped", zap.Uint32("vring", index), zap.Uint32("base", v.base),
			zap.Uint64("popped", c.Popped), zap.Uint64("pushed", c.Pushed))
		v.q = nil
	}
	closeFDs([]int{v.kickFD})
	v.kickFD, v.kicked = -1, false
	return v.base, nil
}

// releaseRing has the ring hook give back every buffer of v's running
// queue (data-path lock held; see RingHook).
func (d *Device) releaseRing(v *vring) {
	if v.q != nil && d.rings != nil {
		d.rings.StopRing(v.q)
	}
}

// resetRings stops every ring and forgets the memory table (RESET_OWNER,
// RESET_DEVICE): the front end rebuilds everything after it.
func (d *Device) resetRings() {
	d.resetSession()
	d.owner = true
}

// setVringFile handles SET_VRING_KICK/CALL/ERR: payload bits 0-7 are the
// index, bit 8 says no descriptor follows.
func (d *Device) setVringFile(m *Message) error {
	val := u64(m.Payload)
	noFD := val&vringNoFD != 0
	if val&^uint64(vringIndexMask|vringNoFD) != 0 {
		return fmt.Errorf("%v payload %#x has reserved bits set", m.Request, val)
	}
	want := 1
	if noFD {
		want = 0
	}
	if err := wantFDs(m, want); err != nil {
		return err
	}
	i := int(val & vringIndexMask)
	v, err := d.vring(uint32(i))
	if err != nil {
		return err
	}
	fd := -1
	if !noFD {
		fd = takeFD(m, 0)
		// Only an eventfd: a pipe or socket could block our writes (and
		// reads) for as long as the front end likes.
		if err := checkEventfd(fd); err != nil {
			closeFDs([]int{fd})
			return fmt.Errorf("%v for vring %d: %w", m.Request, i, err)
		}
	}
	var n *notifier
	if fd >= 0 && m.Request != ReqSetVringKick {
		n = newNotifier(fd)
	}
	switch m.Request {
	case ReqSetVringKick:
		closeFDs([]int{v.kickFD})
		v.kickFD, v.kicked = fd, true
		return d.startVring(i, v)
	case ReqSetVringCall:
		v.call.release()
		v.call = n
		if v.q != nil {
			v.q.call = n
		}
	case ReqSetVringErr:
		v.errN.release()
		v.errN = n
		if v.q != nil {
			v.q.errN = n
		}
	}
	return nil
}

// preparedMemory is guest memory mapped (and reported to the hook) before
// the data-path lock is taken: mmap and DMA-mapping can take long for big
// guests, and pollers must not wait for them.
type preparedMemory struct {
	table *MemoryTable
	err   error
}

// prepareMemory maps the regions of SET_MEM_TABLE and ADD_MEM_REG. It runs
// on the protocol goroutine, the only one that changes d.mem, so reading
// d.protoFeatures here needs no lock.
func (d *Device) prepareMemory(m *Message) (p preparedMemory) {
	if checkSize(m) != nil {
		return p // handle reports it
	}
	switch m.Request {
	case ReqSetMemTable:
		descs, err := decodeMemTable(m.Payload, len(m.FDs))
		if err != nil {
			return preparedMemory{err: err}
		}
		fds := make([]int, len(m.FDs))
		for i := range fds {
			fds[i] = takeFD(m, i)
		}
		// A new table replaces the old one: it is checked on its own.
		p.table, p.err = mapRegions(descs, fds, d.cfg.Hook, 0, d.cfg.MemLimit)
		if p.err != nil {
			p.err = fmt.Errorf("SET_MEM_TABLE: %w", p.err)
		}
	case ReqAddMemReg:
		if d.protoFeatures&ProtoFConfigureMemSlots == 0 {
			return preparedMemory{err: errors.New("ADD_MEM_REG without the CONFIGURE_MEM_SLOTS protocol feature")}
		}
		if err := wantFDs(m, 1); err != nil {
			return preparedMemory{err: err}
		}
		p.table, p.err = mapRegions([]RegionDesc{decodeRegion(m.Payload[8:])}, []int{takeFD(m, 0)}, d.cfg.Hook, d.mem.size(), d.cfg.MemLimit)
		if p.err != nil {
			p.err = fmt.Errorf("ADD_MEM_REG: %w", p.err)
		}
	}
	return p
}

// swapMemory installs a new memory table under the data-path lock (held)
// and re-translates running rings. Regions no longer in use are queued in
// d.retired and released by Dispatch after the lock is dropped (no poller
// can reach them any more) and before the reply: QEMU may free the old
// memory as soon as we acknowledge.
func (d *Device) swapMemory(t *MemoryTable, retired ...Region) {
	if len(retired) > 0 {
		// Buffers in retired regions may be posted to a device: every
		// running ring gives its buffers back while the old table is
		// still in place.
		for i := range d.vrings {
			d.releaseRing(&d.vrings[i])
		}
	}
	d.mem = t
	d.retired = append(d.retired, retired...)
	for i := range d.vrings {
		v := &d.vrings[i]
		if v.q == nil {
			continue
		}
		v.q.mem = t
		err := v.q.translate(d.queueConfig(i, v))
		if err == nil {
			err = d.checkLogAddr(v.addr, v.num)
		}
		if err != nil {
			d.log.Warn("running vring not in the new memory table", zap.Int("vring", i), zap.Error(err))
			v.q.fail(err)
		}
	}
}

// releaseRetired releases regions swapMemory retired; called without the
// data-path lock.
func (d *Device) releaseRetired(regions []Region) {
	for _, r := range regions {
		if err := releaseRegion(r, d.cfg.Hook); err != nil {
			d.log.Error("releasing guest memory", zap.Error(err))
		}
	}
}

func (d *Device) setMemTable(p preparedMemory) error {
	if p.err != nil {
		return p.err
	}
	if err := d.logCovers(p.table); err != nil {
		d.retired = append(d.retired, p.table.regions...)
		return fmt.Errorf("SET_MEM_TABLE: %w", err)
	}
	var old []Region
	if d.mem != nil {
		old = d.mem.regions
	}
	d.swapMemory(p.table, old...)
	return d.startReady()
}

func (d *Device) addMemReg(p preparedMemory) error {
	if p.err != nil {
		return p.err
	}
	r := p.table.regions[0]
	t, err := d.mem.withRegion(r)
	if err == nil && len(t.regions) > maxMemSlots {
		err = fmt.Errorf("more than %d memory slots", maxMemSlots)
	}
	if err == nil {
		err = d.logCovers(t)
	}
	if err != nil {
		d.retired = append(d.retired, r)
		return fmt.Errorf("ADD_MEM_REG gpa %#x: %w", r.GuestPhysAddr, err)
	}
	d.swapMemory(t)
	return d.startReady()
}

func (d *Device) remMemReg(m *Message) error {
	if d.protoFeatures&ProtoFConfigureMemSlots == 0 {
		return errors.New("REM_MEM_REG without the CONFIGURE_MEM_SLOTS protocol feature")
	}
	if len(m.FDs) > 1 {
		return wantFDs(m, 1)
	}
	desc := decodeRegion(m.Payload[8:])
	t, r, ok := d.mem.withoutRegion(desc)
	if !ok {
		return fmt.Errorf("REM_MEM_REG: no region at gpa %#x uva %#x size %#x", desc.GuestPhysAddr, desc.UserAddr, desc.Size)
	}
	d.swapMemory(t, r)
	return nil
}

// virtio-net config space: mac[6], status le16, max_virtqueue_pairs le16,
// mtu le16.
const netConfigSize = 12

func (d *Device) config(m *Message) ([]byte, error) {
	if d.protoFeatures&ProtoFConfig == 0 {
		return nil, fmt.Errorf("%v without the CONFIG protocol feature", m.Request)
	}
	c, err := decodeConfig(m.Payload)
	if err != nil {
		return nil, err
	}
	if uint64(c.Offset)+uint64(c.Size) > netConfigSize {
		return nil, fmt.Errorf("%v offset %d size %d beyond the %d-byte config space", m.Request, c.Offset, c.Size, netConfigSize)
	}
	var space [netConfigSize]byte
	copy(space[:6], d.ctrl.mac[:])
	binary.LittleEndian.PutUint16(space[6:], 1) // VIRTIO_NET_S_LINK_UP
	binary.LittleEndian.PutUint16(space[8:], uint16(d.cfg.QueuePairs))
	binary.LittleEndian.PutUint16(space[10:], d.cfg.MTU)
	if m.Request == ReqSetConfig {
		// Only the MAC is writable (legacy drivers set it this way).
		if c.Offset+c.Size > 6 {
			return nil, fmt.Errorf("SET_CONFIG: only the MAC (bytes 0-5) is writable")
		}
		copy(d.ctrl.mac[c.Offset:], c.Data)
		return nil, nil
	}
	return encodeConfig(ConfigPayload{Offset: c.Offset, Flags: c.Flags, Data: space[c.Offset : c.Offset+c.Size]}), nil
}
