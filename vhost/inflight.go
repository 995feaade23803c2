package vhost

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// Inflight I/O tracking (VHOST_USER_PROTOCOL_F_INFLIGHT_SHMFD, QEMU's
// docs/interop/vhost-user.rst, "Inflight I/O tracking"). The front end
// asks the back end for a shared buffer (GET_INFLIGHT_FD), keeps the
// descriptor, and hands it back (SET_INFLIGHT_FD) every time it starts the
// device, in particular after the back end restarted or crashed. While it
// is set, the back end records in it which descriptor heads it has taken
// from the available ring and not yet returned in the used ring; a back
// end that restarts resubmits exactly those chains, oldest first, before
// taking new ones. Without it a restarted back end only knows used->idx,
// and chains it had taken but not completed (out of order) are lost.
//
// Who sends it: only front ends of devices whose requests must not be
// lost. QEMU calls vhost_dev_get_inflight/vhost_dev_set_inflight
// (hw/virtio/vhost.c) from vhost-user-blk (hw/block/vhost-user-blk.c,
// vhost_user_blk_start) and vhost-scsi-common
// (hw/scsi/vhost-scsi-common.c), never from hw/net/vhost_net.c: QEMU's
// vhost-user-net (7.2 and later) does not send GET_INFLIGHT_FD or
// SET_INFLIGHT_FD. DPDK's net_virtio_user
// (drivers/net/virtio/virtio_user/vhost_user.c) has no inflight requests
// either (it negotiates MQ, REPLY_ACK and STATUS only). For a network
// device a lost frame is the guest's TCP's problem; the feature is here for
// front ends that do use it (libvhost-user-based and custom ones), and is
// among the default protocol features because a front end that never sends
// SET_INFLIGHT_FD costs the data path one nil check per Pop, Push and Flush.
//
// Layout of the buffer: one region per virtqueue, each region
// inflightRegionBytes(queue size, packed) long (aligned to 64 bytes as
// libvhost-user and DPDK align them; both compute the same size for every
// power-of-two queue size). A split ring's region (QueueRegionSplit):
//
//	u64 features; u16 version; u16 desc_num; u16 last_batch_head; u16 used_idx;
//	desc[desc_num] { u8 inflight; u8 padding[5]; u16 next; u64 counter }
//
// A packed ring's region (QueueRegionPacked) keeps copies of the
// descriptors taken, a free list and old/new used positions; it is in
// inflight_packed.go. Which layout a buffer has follows RING_PACKED as
// negotiated when the buffer is created and set (QEMU sends SET_FEATURES
// before GET_INFLIGHT_FD for that reason: vhost_dev_prepare_inflight).

// Errors refusing an inflight buffer.
var (
	// ErrInflightBounds: num_queues, queue_size, mmap_size or mmap_offset
	// out of range, or a file shorter than they say.
	ErrInflightBounds = errors.New("vhost: inflight buffer size, offset or layout out of bounds")
	// ErrInflightCorrupt: a queue's region contradicts the ring it is for
	// (unknown version, desc_num not the ring size, impossible inflight
	// entries); the ring is not started.
	ErrInflightCorrupt = errors.New("vhost: inflight region inconsistent with its ring")
)

// Layout constants of a split ring's region.
const (
	inflightAlign   = 64 // INFLIGHT_ALIGNMENT in libvhost-user and DPDK
	inflightVersion = 1

	inflightHdrSize   = 16 // features, version, desc_num, last_batch_head, used_idx
	inflightOffVers   = 8
	inflightOffNum    = 10
	inflightOffBatch  = 12
	inflightOffUsed   = 14
	inflightDescSize  = 16
	inflightDescNext  = 6
	inflightDescCount = 8

	// sizeInflight is the payload of GET/SET_INFLIGHT_FD: u64 mmap_size,
	// u64 mmap_offset, u16 num_queues, u16 queue_size, padded to 24
	// bytes as QEMU's VhostUserInflight is.
	sizeInflight = 24
)

// inflightRegionBytes is the size of one queue's region for a ring of qs
// descriptors.
func inflightRegionBytes(qs uint16, packed bool) uint64 {
	hdr, desc := uint64(inflightHdrSize), uint64(inflightDescSize)
	if packed {
		hdr, desc = pkInflHdrSize, pkInflDescSize
	}
	return (hdr + desc*uint64(qs) + inflightAlign - 1) &^ (inflightAlign - 1)
}

// InflightDesc is the payload of GET_INFLIGHT_FD and SET_INFLIGHT_FD.
type InflightDesc struct {
	MmapSize, MmapOffset uint64
	NumQueues, QueueSize uint16
}

// EncodeInflight returns a GET/SET_INFLIGHT_FD payload.
func EncodeInflight(d InflightDesc) []byte {
	b := make([]byte, sizeInflight)
	binary.NativeEndian.PutUint64(b, d.MmapSize)
	binary.NativeEndian.PutUint64(b[8:], d.MmapOffset)
	binary.NativeEndian.PutUint16(b[16:], d.NumQueues)
	binary.NativeEndian.PutUint16(b[18:], d.QueueSize)
	return b
}

// DecodeInflight parses a GET/SET_INFLIGHT_FD payload.
func DecodeInflight(p []byte) (InflightDesc, error) {
	if len(p) != sizeInflight {
		return InflightDesc{}, fmt.Errorf("%w: inflight description of %d bytes, want %d", ErrBadSize, len(p), sizeInflight)
	}
	return InflightDesc{MmapSize: u64(p), MmapOffset: u64(p[8:]),
		NumQueues: binary.NativeEndian.Uint16(p[16:]), QueueSize: binary.NativeEndian.Uint16(p[18:])}, nil
}

// InflightBytes is the buffer GET_INFLIGHT_FD returns for numQueues split
// rings of queueSize descriptors.
func InflightBytes(numQueues, queueSize uint16) uint64 {
	return uint64(numQueues) * inflightRegionBytes(queueSize, false)
}

// InflightBytesPacked is the buffer GET_INFLIGHT_FD returns for numQueues
// packed rings of queueSize descriptors (32-byte header, 32 bytes per
// descriptor, each region 64-byte aligned, as DPDK sizes it).
func InflightBytesPacked(numQueues, queueSize uint16) uint64 {
	return uint64(numQueues) * inflightRegionBytes(queueSize, true)
}

func inflightBytes(numQueues, queueSize uint16, packed bool) uint64 {
	return uint64(numQueues) * inflightRegionBytes(queueSize, packed)
}

// checkInflightShape checks num_queues and queue_size against a device of
// nrings virtqueues.
func checkInflightShape(d InflightDesc, nrings int) error {
	if d.NumQueues == 0 || int(d.NumQueues) > nrings {
		return fmt.Errorf("%w: num_queues %d (the device has %d virtqueues)", ErrInflightBounds, d.NumQueues, nrings)
	}
	if qs := d.QueueSize; qs == 0 || qs > MaxQueueSize || qs&(qs-1) != 0 {
		return fmt.Errorf("%w: queue_size %d is not a power of two up to %d", ErrInflightBounds, qs, MaxQueueSize)
	}
	return nil
}

// inflightBuffer is the front end's inflight buffer mapped into this
// process (SET_INFLIGHT_FD), until the session ends or another replaces
// it. Rings hold slices of it while they run: it is unmapped only with the
// data-path lock held and no ring running.
type inflightBuffer struct {
	mapping   []byte // the whole mmap, from file offset 0
	buf       []byte // the buffer: num_queues regions
	numQueues uint16
	queueSize uint16
	packed    bool // regions laid out for packed rings (QueueRegionPacked)
}

// region returns queue i's region, or nil if the buffer has none for it.
func (b *inflightBuffer) region(i int) []byte {
	if b == nil || i >= int(b.numQueues) {
		return nil
	}
	n := int(inflightRegionBytes(b.queueSize, b.packed))
	return b.buf[i*n : (i+1)*n : (i+1)*n]
}

// holds reports whether host address addr lies in the buffer's mapping.
func (b *inflightBuffer) holds(addr uintptr) bool {
	return b != nil && addr >= hostAddr(b.mapping) && addr-hostAddr(b.mapping) < uintptr(len(b.mapping))
}

func (b *inflightBuffer) unmap() error {
	if b == nil || b.mapping == nil {
		return nil
	}
	err := unix.Munmap(b.mapping)
	b.mapping, b.buf = nil, nil
	return err
}

// maxInflightBytes bounds mmap_size: far above what 257 rings of 32768
// descriptors need (about 135 MB).
const maxInflightBytes = 1 << 32

// mapInflight checks and maps the buffer SET_INFLIGHT_FD describes, laid
// out for packed rings if packed. fd is always closed.
func mapInflight(fd int, d InflightDesc, nrings int, packed bool) (*inflightBuffer, error) {
	defer closeFDs([]int{fd})
	if err := checkInflightShape(d, nrings); err != nil {
		return nil, err
	}
	need := inflightBytes(d.NumQueues, d.QueueSize, packed)
	if d.MmapSize < need || d.MmapSize > maxInflightBytes {
		return nil, fmt.Errorf("%w: mmap_size %d, but %d queues of %d descriptors need %d bytes (at most %d)",
			ErrInflightBounds, d.MmapSize, d.NumQueues, d.QueueSize, need, uint64(maxInflightBytes))
	}
	// Regions are read and written in aligned 16-bit words; libvhost-user
	// and DPDK mmap at mmap_offset, so they need it page-aligned anyway.
	if d.MmapOffset%inflightAlign != 0 || d.MmapOffset > 1<<47 {
		return nil, fmt.Errorf("%w: mmap_offset %#x is not a multiple of %d below 2^47", ErrInflightBounds, d.MmapOffset, inflightAlign)
	}
	end := d.MmapOffset + d.MmapSize
	// The same rules as guest memory: a shared-memory file, a memfd sealed
	// against shrinking, so that it cannot be cut under the mapping.
	st, err := statSharedFile(fd, "inflight buffer", end, "mmap_offset+mmap_size", ErrInflightBounds)
	if err != nil {
		return nil, err
	}
	// Only what the regions take is mapped (and ever touched), all of it
	// inside the file.
	length := d.MmapOffset + need
	if align := uint64(st.Blksize); align > 0 && align&(align-1) == 0 {
		length = (length + align - 1) &^ (align - 1) // hugetlbfs: whole pages
	}
	m, err := unix.Mmap(fd, 0, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of inflight buffer: %w", length, err)
	}
	_ = unix.Madvise(m, unix.MADV_DONTDUMP)
	lo, hi := int(d.MmapOffset), int(d.MmapOffset+need)
	return &inflightBuffer{mapping: m, buf: m[lo:hi:hi], numQueues: d.NumQueues, queueSize: d.QueueSize, packed: packed}, nil
}

// newInflightFD makes the zeroed buffer GET_INFLIGHT_FD returns: a memfd
// sealed against resizing (as libvhost-user seals its own), so that
// neither side can cut it under the other's mapping.
func newInflightFD(size uint64) (int, error) {
	fd, err := unix.MemfdCreate("zcnet-vhost-inflight", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING)
	if err != nil {
		return -1, fmt.Errorf("memfd_create for the inflight buffer: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(size)); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sizing the inflight buffer to %d bytes: %w", size, err)
	}
	if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW|unix.F_SEAL_SEAL); err != nil {
		unix.Close(fd)
		return -1, fmt.Errorf("sealing the inflight buffer: %w", err)
	}
	return fd, nil
}

// getInflightFD handles GET_INFLIGHT_FD: a new zeroed buffer for the
// queues the payload describes, returned with its descriptor (which
// Dispatch's caller sends and closes). The back end keeps nothing: the
// front end hands the buffer back with SET_INFLIGHT_FD.
func (d *Device) getInflightFD(m *Message) ([]byte, error) {
	if d.protoFeatures&ProtoFInflightShmfd == 0 {
		return nil, errors.New("GET_INFLIGHT_FD without the INFLIGHT_SHMFD protocol feature")
	}
	req, err := DecodeInflight(m.Payload)
	if err != nil {
		return nil, err
	}
	if err := checkInflightShape(req, len(d.vrings)); err != nil {
		return nil, fmt.Errorf("GET_INFLIGHT_FD: %w", err)
	}
	// Zeroed whatever the layout: version 0 means "never used", and the
	// back end lays a region out when its ring first starts, from the
	// ring's actual position (DPDK also links a packed region's free
	// list here, assuming a ring that starts at 0).
	size := inflightBytes(req.NumQueues, req.QueueSize, d.features&FRingPacked != 0)
	fd, err := newInflightFD(size)
	if err != nil {
		return nil, fmt.Errorf("GET_INFLIGHT_FD: %w", err)
	}
	d.replyFDs = append(d.replyFDs, fd)
	d.log.Info("inflight buffer created", zap.Uint16("queues", req.NumQueues), zap.Uint16("queue_size", req.QueueSize),
		zap.Uint64("size", size), zap.Bool("packed", d.features&FRingPacked != 0))
	return EncodeInflight(InflightDesc{MmapSize: size, NumQueues: req.NumQueues, QueueSize: req.QueueSize}), nil
}

// inflightRefusal is GET_INFLIGHT_FD's reply when the back end has no
// buffer to give: mmap_size 0 and no descriptor, which QEMU
// (vhost_user_get_inflight_fd) takes for "no inflight tracking" and
// libvhost-user sends on failure.
func inflightRefusal(p []byte) []byte {
	d, _ := DecodeInflight(p)
	return EncodeInflight(InflightDesc{NumQueues: d.NumQueues, QueueSize: d.QueueSize})
}

// setInflightFD handles SET_INFLIGHT_FD: the buffer replaces the previous
// one and is used from the next start of each ring on. Rings must be
// stopped: a running ring records into the buffer it started with.
func (d *Device) setInflightFD(m *Message) error {
	if d.protoFeatures&ProtoFInflightShmfd == 0 {
		return errors.New("SET_INFLIGHT_FD without the INFLIGHT_SHMFD protocol feature")
	}
	if err := wantFDs(m, 1); err != nil {
		return err
	}
	req, err := DecodeInflight(m.Payload)
	if err != nil {
		return err
	}
	for i := range d.vrings {
		if d.vrings[i].q != nil {
			return fmt.Errorf("SET_INFLIGHT_FD while vring %d runs; stop it with GET_VRING_BASE first", i)
		}
	}
	b, err := mapInflight(takeFD(m, 0), req, len(d.vrings), d.features&FRingPacked != 0)
	if err != nil {
		return fmt.Errorf("SET_INFLIGHT_FD: %w", err)
	}
	if err := d.inflight.unmap(); err != nil {
		d.log.Error("unmapping the previous inflight buffer", zap.Error(err))
	}
	d.inflight = b
	d.log.Info("inflight buffer mapped", zap.Uint16("queues", req.NumQueues), zap.Uint16("queue_size", req.QueueSize),
		zap.Uint64("size", req.MmapSize), zap.Uint64("offset", req.MmapOffset), zap.Bool("packed", b.packed))
	return nil
}

// trackInflight attaches ring i's region of the inflight buffer, if one is
// set and has a region for it, to q as it starts (data-path lock held).
func (d *Device) trackInflight(i int, q *Virtqueue) error {
	r := d.inflight.region(i)
	if r == nil {
		return nil
	}
	// SET_FEATURES may have changed RING_PACKED since SET_INFLIGHT_FD.
	if q.pk.on != d.inflight.packed {
		return fmt.Errorf("vring %d: %w: the inflight buffer is laid out for %s rings, the ring is %s",
			i, ErrInflightCorrupt, ringKind(d.inflight.packed), ringKind(q.pk.on))
	}
	if d.inflight.queueSize != q.size {
		return fmt.Errorf("vring %d: %w: the inflight buffer is laid out for %d descriptors per queue, the ring has %d",
			i, ErrInflightCorrupt, d.inflight.queueSize, q.size)
	}
	base := q.AvailPos()
	if err := q.attachInflight(r); err != nil {
		return fmt.Errorf("vring %d: %w", i, err)
	}
	if n := q.infl.resubmitted(); n > 0 || base != q.AvailPos() {
		d.log.Info("resuming vring from the inflight buffer", zap.Int("vring", i), zap.Int("resubmitted", n),
			zap.Uint16("base", base), zap.Uint32("resumed_base", q.infl.availBase(q)))
	}
	return nil
}

func ringKind(packed bool) string {
	if packed {
		return "packed"
	}
	return "split"
}

// ringInflight is a running ring's inflight tracking (splitInflight or
// packedInflight), called from the data path only while a region is
// attached.
type ringInflight interface {
	// pop is Pop: resubmitted chains first, then new ones, recorded.
	pop(q *Virtqueue, c *Chain) (bool, error)
	// pushed records a used entry about to be staged.
	pushed(head uint16)
	// publishing runs just before Flush's store that makes the used
	// entries visible (packed only), published just after it.
	publishing(q *Virtqueue)
	published(q *Virtqueue)
	// rewound runs before the ring moves back from its position to pos.
	rewound(q *Virtqueue, pos uint16)
	// availBase is what GET_VRING_BASE reports.
	availBase(q *Virtqueue) uint32
	// resubmitted is how many chains were found inflight at the start.
	resubmitted() int
}

// checkRegionHeader reads a region's version (at offVers) and desc_num (at
// offNum), the same fields in both layouts: fresh for version 0 (a buffer
// no back end has written), ErrInflightCorrupt for a version this back
// end does not know or a region for another ring size.
func checkRegionHeader(r []byte, offVers, offNum int, size uint16) (fresh bool, err error) {
	switch v := load16(r, offVers); v {
	case 0:
		return true, nil
	case inflightVersion:
	default:
		return false, fmt.Errorf("%w: version %d (this back end knows %d)", ErrInflightCorrupt, v, inflightVersion)
	}
	if n := load16(r, offNum); n != size {
		return false, fmt.Errorf("%w: desc_num %d, the ring has %d descriptors", ErrInflightCorrupt, n, size)
	}
	return false, nil
}

// attachInflight starts tracking q (about to start) in region r, resuming
// from it (see attachSplit and attachPacked).
func (q *Virtqueue) attachInflight(r []byte) error {
	if q.pk.on {
		return q.attachPacked(r)
	}
	return q.attachSplit(r)
}

// splitInflight is a split ring's tracking state: its region of the
// inflight buffer (written here, read only by a later back end resuming
// the ring) and what this back end keeps to itself.
type splitInflight struct {
	r         []byte // the queue's region: header, then size descriptor states
	size      uint16
	counter   uint64   // the next pop's order stamp
	lastBatch uint16   // last_batch_head as written
	batch     []uint16 // heads pushed since the last Flush
	// resubmit lists the heads found inflight when the ring started, in
	// the order they were taken; they are popped at ring positions
	// rsStart, rsStart+1, ... before any new available entry.
	resubmit []uint16
	rsStart  uint16
}

func (t *splitInflight) desc(head uint16) int { return inflightHdrSize + inflightDescSize*int(head) }

func (t *splitInflight) resubmitted() int { return len(t.resubmit) }

// attachSplit starts tracking q (split, about to start) in region r and
// resumes from it as the spec's "When reconnecting" says: a batch the
// previous back end published in the used ring but had not finished
// clearing is cleared (used_idx behind used->idx), then every head still
// inflight is resubmitted in the order of its counter, and the ring's
// position becomes used->idx plus their number (every chain taken from
// the available ring is either used or inflight). Anything in r that no
// correct back end writes is refused with ErrInflightCorrupt, before q
// takes anything from it.
func (q *Virtqueue) attachSplit(r []byte) error {
	t := &splitInflight{r: r, size: q.size, batch: make([]uint16, 0, q.size)}
	used := q.usedIdx // read from the ring as it started
	fresh, err := checkRegionHeader(r, inflightOffVers, inflightOffNum, q.size)
	if err != nil {
		return err
	}
	if fresh {
		// A new buffer: nothing to resume. Whatever a front end left in
		// it is cleared rather than trusted.
		clear(r)
		store16(r, inflightOffNum, q.size)
		store16(r, inflightOffUsed, used)
		store16(r, inflightOffVers, inflightVersion)
		q.infl = t
		return nil
	}
	// The crash-consistency rule: used_idx is written after the batch's
	// inflight flags are cleared, so if it lags used->idx the last batch
	// (linked from last_batch_head through next) is published but may
	// still be marked.
	if lag := used - load16(r, inflightOffUsed); lag != 0 {
		if lag > q.size {
			return fmt.Errorf("%w: used_idx %d is %d entries behind used->idx %d (more than the ring holds)",
				ErrInflightCorrupt, load16(r, inflightOffUsed), lag, used)
		}
		h := load16(r, inflightOffBatch)
		for range lag {
			if h >= q.size {
				return fmt.Errorf("%w: last batch list reaches head %d (ring of %d)", ErrInflightCorrupt, h, q.size)
			}
			store16(r, t.desc(h), 0)
			h = load16(r, t.desc(h)+inflightDescNext)
		}
		store16(r, inflightOffUsed, used)
	}
	type entry struct {
		head    uint16
		counter uint64
	}
	var found []entry
	for h := range q.size {
		switch f := r[t.desc(h)]; f {
		case 0:
		case 1:
			found = append(found, entry{h, binary.LittleEndian.Uint64(r[t.desc(h)+inflightDescCount:])})
		default:
			return fmt.Errorf("%w: head %d has inflight flag %d", ErrInflightCorrupt, h, f)
		}
	}
	// Every inflight chain came from the available ring after the used
	// ones: no more than the driver has made available and not had back.
	if pending := q.availIdx() - used; len(found) > int(pending) {
		return fmt.Errorf("%w: %d heads inflight, but the driver has only %d chains outstanding (avail->idx %d, used->idx %d)",
			ErrInflightCorrupt, len(found), pending, q.availIdx(), used)
	}
	// Counter order; the head breaks ties, so that a front end's equal
	// counters still give one order.
	slices.SortFunc(found, func(a, b entry) int {
		if a.counter != b.counter {
			if a.counter < b.counter {
				return -1
			}
			return 1
		}
		return int(a.head) - int(b.head)
	})
	t.resubmit = make([]uint16, len(found))
	for i, e := range found {
		t.resubmit[i] = e.head
		t.counter = max(t.counter, e.counter+1)
	}
	t.lastBatch = load16(r, inflightOffBatch)
	t.rsStart = used
	q.lastAvail, q.availSeen = used, used
	q.infl = t
	q.setPolling() // avail_event follows the new position
	return nil
}

// pop is Pop while an inflight region is attached: resubmitted chains
// first, then new available ones, each marked inflight with the next
// counter value before it is returned.
func (t *splitInflight) pop(q *Virtqueue, c *Chain) (bool, error) {
	if k := q.lastAvail - t.rsStart; int(k) < len(t.resubmit) {
		head := t.resubmit[k]
		c.Head = head
		c.Segs = c.Segs[:0]
		c.ReadLen, c.WriteLen = 0, 0
		// Already marked, with the counter of its first pop; its
		// descriptors are the driver's until it is used, so they are
		// still what they were, and checked again in full.
		err := q.walk(c, head)
		if err != nil && err != ErrTooManySegs {
			return false, q.fail(err)
		}
		q.lastAvail++
		if int16(q.availSeen-q.lastAvail) < 0 {
			q.availSeen = q.lastAvail // Pop reads avail->idx again from here
		}
		q.counts.Popped++
		return true, err
	}
	q.infl = nil // Pop without the hook, then mark what it took
	ok, err := q.Pop(c)
	q.infl = t
	if ok {
		t.mark(c.Head)
	}
	return ok, err
}

// mark records head as taken: counter first, then the flag (the spec's
// order, so that a flag set is never without its counter).
func (t *splitInflight) mark(head uint16) {
	if head >= t.size {
		return // Pop checked it; a pushed garbage id is not ours to track
	}
	d := t.desc(head)
	binary.LittleEndian.PutUint64(t.r[d+inflightDescCount:], t.counter)
	t.counter++
	store16(t.r, d, 1) // inflight = 1, padding[0] = 0
}

// pushed links head into the last batch list (next = last_batch_head,
// last_batch_head = head) before the used ring index that publishes it
// moves; its flag is cleared only after (published).
func (t *splitInflight) pushed(head uint16) {
	if head >= t.size {
		return
	}
	store16(t.r, t.desc(head)+inflightDescNext, t.lastBatch)
	store16(t.r, inflightOffBatch, head)
	t.lastBatch = head
	t.batch = append(t.batch, head)
}

func (t *splitInflight) publishing(*Virtqueue) {}

// published runs after Flush stored used->idx: the batch's flags are
// cleared, then used_idx records that they are (a back end that finds
// used_idx behind used->idx clears the batch itself).
func (t *splitInflight) published(q *Virtqueue) {
	for _, h := range t.batch {
		store16(t.r, t.desc(h), 0)
	}
	t.batch = t.batch[:0]
	store16(t.r, inflightOffUsed, q.usedIdx)
}

// rewound runs before a split ring moves back from its position to pos
// (Unpop, RewindTo): chains taken from the available ring since pos will
// be taken again, so they are no longer inflight. Resubmitted chains in
// the range stay marked: they are offered again from the resubmit list.
// Flags are cleared newest first, so that a crash part way leaves the
// oldest still marked: the resumed position (used->idx plus the number
// marked) then still ends right after the marked ones.
func (t *splitInflight) rewound(q *Virtqueue, pos uint16) {
	n := q.lastAvail - pos
	if n > q.size {
		return // not a rewind Pop's positions allow
	}
	for p := q.lastAvail - 1; p != pos-1; p-- {
		if int(p-t.rsStart) < len(t.resubmit) {
			continue
		}
		if h := load16(q.avail, 4+2*int(p&q.mask)); h < t.size {
			store16(t.r, t.desc(h), 0)
		}
	}
}

// availBase is the split ring's position GET_VRING_BASE reports while a
// region is attached: resubmitted chains not popped again yet still count
// as taken from the available ring (they are inflight in the region).
func (t *splitInflight) availBase(q *Virtqueue) uint32 {
	if k := q.lastAvail - t.rsStart; int(k) < len(t.resubmit) {
		return uint32(t.rsStart + uint16(len(t.resubmit)))
	}
	return uint32(q.lastAvail)
}
