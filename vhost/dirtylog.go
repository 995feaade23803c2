package vhost

import (
	"errors"
	"fmt"
	"strings"

	"go.uber.org/zap"
	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/internal/memword"
)

// Dirty logging for live migration (VHOST_F_LOG_ALL with
// VHOST_USER_PROTOCOL_F_LOG_SHMFD). While the front end migrates the guest
// it hands over a shared bitmap (SET_LOG_BASE) with one bit per 4 KiB
// guest page, bit p%8 of byte p/8 for page p = gpa/4096 (QEMU reads it as
// host-endian u64 chunks, bit p%64 of chunk p/64, which is the same on a
// little-endian host), and acks LOG_ALL. From then on every byte the back
// end, or a device on its behalf, writes into guest memory must have its
// page's bit set after the write, so that QEMU sends the page again. QEMU
// clears bits as it reads them (an atomic exchange per chunk), so bits are
// set with atomic ORs, never plain stores.

// LogPageSize is the guest page size of the dirty log (VHOST_LOG_PAGE).
const LogPageSize = 4096

const logPageShift = 12

// maxLogBytes caps a log: one bit per page of a 2^47-byte guest physical
// space, far above any guest's memory.
const maxLogBytes = 1 << 32

// Errors refusing a SET_LOG_BASE.
var (
	// ErrLogTooSmall: the log has no bit for some page of the memory
	// table (QEMU sizes it from the highest guest physical address).
	ErrLogTooSmall = errors.New("vhost: dirty log too small for the guest memory table")
	// ErrLogBounds: size and offset overflow, exceed the file or are 0.
	ErrLogBounds = errors.New("vhost: dirty log size or offset out of bounds")
)

// DirtyLog is a front end's dirty page bitmap mapped into this process.
// Mark may be called only while the device's data-path lock is held (the
// log is unmapped under it when replaced); the bits themselves are shared
// with the front end and updated atomically.
type DirtyLog struct {
	mapping []byte // the whole mmap, from file offset 0; length a multiple of 4
	base    int    // the log's first byte in mapping (SET_LOG_BASE offset)
	size    uint64 // the log's length in bytes
	outside uint64 // pages marked that the log has no bit for (see Mark)

	// touched has a bit, as the log does, for every page the device could
	// have written while logging: the buffers of every chain popped and
	// the rings (see Touched). It is kept apart from the log, which the
	// front end clears as it reads, and independent of Mark's callers, so
	// that a migration test can tell a page that reached the destination
	// stale because the back end failed to mark it (touched) from one
	// the front end lost on its own (never touched). Sized for the memory
	// table when the log arrived, not for the log (whose size the front
	// end chooses); pages beyond it are not recorded.
	touched []byte
}

// Mark sets the bit of every page of guest physical range [gpa, gpa+n).
// Pages beyond the log are counted (Outside), not marked: a log too small
// for the memory table is refused when it arrives or when the table
// changes, so they are a front end's error, and never touch memory outside
// the mapping.
func (l *DirtyLog) Mark(gpa, n uint64) {
	if n == 0 {
		return
	}
	first, end := pageSpan(gpa, n)
	if limit := l.size * 8; end >= limit {
		if first >= limit {
			l.outside += end - first + 1
			return
		}
		l.outside += end - limit + 1
		end = limit - 1
	}
	setBits(l.mapping, uint64(l.base)*8+first, uint64(l.base)*8+end)
}

// pageSpan is the first and last page of guest physical range
// [gpa, gpa+n), n > 0; a range running past the end of the address space
// ends with it.
func pageSpan(gpa, n uint64) (first, last uint64) {
	end := gpa + n - 1
	if end < gpa {
		end = ^uint64(0)
	}
	return gpa >> logPageShift, end >> logPageShift
}

// setBits sets bits [b, e] of bitmap m with atomic ORs. Bit b of m is bit
// b%32 of the 32-bit word at byte 4*(b/32): m is little endian like the
// log's chunks. Every word's bits are set in one OR.
func setBits(m []byte, b, e uint64) {
	for w := b >> 5; w <= e>>5; w++ {
		lo, hi := uint64(0), uint64(31)
		if w == b>>5 {
			lo = b & 31
		}
		if w == e>>5 {
			hi = e & 31
		}
		mask := uint32((uint64(1)<<(hi-lo+1) - 1) << lo)
		memword.Or32(m, int(4*w), mask)
	}
}

// touch records guest physical range [gpa, gpa+n) as one the device could
// write (see touched).
func (l *DirtyLog) touch(gpa, n uint64) {
	if n == 0 || len(l.touched) == 0 {
		return
	}
	first, end := pageSpan(gpa, n)
	limit := uint64(len(l.touched)) * 8
	if first >= limit {
		return
	}
	setBits(l.touched, first, min(end, limit-1))
}

// maxTouch bounds what touchSegments and touchPosted record of one chain
// or descriptor: more than a device writes into one (a 64 KiB GSO frame
// and its header), so that a front end's huge buffers cannot make each
// pop set bits for gigabytes of pages.
const maxTouch = 128 << 10

// touchSegments records the pages of a popped chain's segments, in order,
// up to maxTouch bytes.
func (l *DirtyLog) touchSegments(segs []Segment) {
	left := uint64(maxTouch)
	for i := range segs {
		n := min(uint64(len(segs[i].Buf)), left)
		l.touch(segs[i].GPA, n)
		if left -= n; left == 0 {
			return
		}
	}
}

// Touched lists the guest pages the device could have written while this
// log was on, as ranges of page numbers (guest physical address / 4096),
// e.g. "0x2c00-0x2c07,0xfcad". Words without a bit are skipped whole: a
// large guest's record is mostly empty.
func (l *DirtyLog) Touched() string {
	var b strings.Builder
	set := func(p uint64) bool { return memword.Load32(l.touched, int(p>>5)*4)>>(p&31)&1 != 0 }
	n := uint64(len(l.touched)) * 8
	for p := uint64(0); p < n; {
		if p&31 == 0 && memword.Load32(l.touched, int(p>>5)*4) == 0 {
			p += 32
			continue
		}
		if !set(p) {
			p++
			continue
		}
		q := p
		for q+1 < n && set(q+1) {
			q++
		}
		if b.Len() > 0 {
			b.WriteByte(',')
		}
		fmt.Fprintf(&b, "%#x", p)
		if q > p {
			fmt.Fprintf(&b, "-%#x", q)
		}
		p = q + 1
	}
	return b.String()
}

// MarkSegments marks the pages of bytes [off, off+n) of the buffer segs
// describes (readable and writable segments in chain order, as Scatter
// counts them).
func (l *DirtyLog) MarkSegments(segs []Segment, off, n int) {
	for i := range segs {
		if n <= 0 {
			return
		}
		k := len(segs[i].Buf)
		if off >= k {
			off -= k
			continue
		}
		m := min(k-off, n)
		l.Mark(segs[i].GPA+uint64(off), uint64(m))
		n -= m
		off = 0
	}
}

// Outside counts pages marked beyond the end of the log (none with a log
// sized for the memory table).
func (l *DirtyLog) Outside() uint64 { return l.outside }

// Size is the log's length in bytes.
func (l *DirtyLog) Size() uint64 { return l.size }

// holds reports whether host address addr lies in the log's mapping.
func (l *DirtyLog) holds(addr uintptr) bool {
	return l != nil && addr >= hostAddr(l.mapping) && addr-hostAddr(l.mapping) < uintptr(len(l.mapping))
}

func (l *DirtyLog) unmap() error {
	if l == nil || l.mapping == nil {
		return nil
	}
	err := unix.Munmap(l.mapping)
	l.mapping = nil
	return err
}

// logBytesFor is the log size, in bytes, that has a bit for every page of
// memory table t: up to the page of its highest guest physical address.
func logBytesFor(t *MemoryTable) uint64 {
	if t == nil || len(t.regions) == 0 {
		return 0
	}
	var top uint64
	for _, r := range t.regions {
		top = max(top, r.GuestPhysAddr+r.Size-1)
	}
	return top>>logPageShift/8 + 1
}

// mapDirtyLog checks and maps the log SET_LOG_BASE describes: size bytes
// at offset off of shared-memory file fd, which needs at least need bytes.
// fd is always closed.
func mapDirtyLog(fd int, size, off, need uint64) (*DirtyLog, error) {
	defer closeFDs([]int{fd})
	end := off + size
	if size == 0 || end < off || size > maxLogBytes || end > 1<<47 {
		return nil, fmt.Errorf("%w: size %#x offset %#x (at most %#x bytes)", ErrLogBounds, size, off, uint64(maxLogBytes))
	}
	if size < need {
		return nil, fmt.Errorf("%w: %d bytes, the memory table needs %d (one bit per 4 KiB page up to its highest address)", ErrLogTooSmall, size, need)
	}
	// The same rules as guest memory: a shared-memory file, a memfd sealed
	// against shrinking (QEMU seals its log memfd).
	st, err := statSharedFile(fd, "dirty log", end, "offset+size", ErrLogBounds)
	if err != nil {
		return nil, err
	}
	// Whole 32-bit words: the last one may run up to 3 bytes past the
	// log's end, inside the page of its last byte (which the file holds,
	// so the access cannot fault).
	length := (end + 3) &^ 3
	if align := uint64(st.Blksize); align > 0 && align&(align-1) == 0 {
		length = (length + align - 1) &^ (align - 1) // hugetlbfs: whole pages
	}
	m, err := unix.Mmap(fd, 0, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return nil, fmt.Errorf("mmap %d bytes of dirty log: %w", length, err)
	}
	_ = unix.Madvise(m, unix.MADV_DONTDUMP)
	return &DirtyLog{mapping: m, base: int(off), size: size}, nil
}

// setLogBase handles SET_LOG_BASE: payload {u64 size, u64 offset} and the
// log's file descriptor. The new log replaces the previous one, which is
// unmapped (no poller can hold it: the data-path lock is held).
func (d *Device) setLogBase(m *Message) error {
	if d.protoFeatures&ProtoFLogShmfd == 0 {
		return errors.New("SET_LOG_BASE without the LOG_SHMFD protocol feature")
	}
	if err := wantFDs(m, 1); err != nil {
		return err
	}
	size, off := u64(m.Payload), u64(m.Payload[8:])
	need := logBytesFor(d.mem)
	l, err := mapDirtyLog(takeFD(m, 0), size, off, need)
	if err != nil {
		return err
	}
	l.touched = make([]byte, (need+3)&^3)
	old := d.dirty
	d.dirty = l
	if err := old.unmap(); err != nil {
		d.log.Error("unmapping the previous dirty log", zap.Error(err))
	}
	d.log.Info("dirty log mapped", zap.Uint64("size", size), zap.Uint64("offset", off))
	return nil
}

// setLogFD handles SET_LOG_FD: an eventfd the back end may signal when it
// changed the log. This back end never needs to (the log is shared
// memory QEMU reads itself), but keeps it, checked like the call fds, for
// the session.
func (d *Device) setLogFD(m *Message) error {
	if err := wantFDs(m, 1); err != nil {
		return err
	}
	fd := takeFD(m, 0)
	if err := checkEventfd(fd); err != nil {
		closeFDs([]int{fd})
		return fmt.Errorf("SET_LOG_FD: %w", err)
	}
	closeFDs([]int{d.logFD})
	d.logFD = fd
	return nil
}

// checkLogAddr checks the used ring log address of a ring that asks for
// used ring logging (VHOST_VRING_F_LOG), once the memory table is known:
// the used ring (split: flags, idx, num elements and avail_event; packed:
// the device event area, which is what QEMU sends as the used address),
// 4-byte aligned, inside guest memory.
func (d *Device) checkLogAddr(a VringAddr, num uint16) error {
	if a.Flags&VringFLog == 0 || d.mem == nil {
		return nil
	}
	n := uint64(4)
	if d.features&FRingPacked == 0 {
		n = 6 + 8*uint64(num)
	}
	if a.Log%4 != 0 {
		return fmt.Errorf("vring %d used ring log address %#x is not 4-byte aligned", a.Index, a.Log)
	}
	if _, err := d.mem.TranslateGPA(a.Log, n); err != nil {
		return fmt.Errorf("vring %d used ring log address %#x (+%d bytes): %w", a.Index, a.Log, n, err)
	}
	return nil
}

// logCovers refuses memory table t while logging is on with a log that
// has no bit for some of t's pages: QEMU grows the log before it sends a
// larger table.
func (d *Device) logCovers(t *MemoryTable) error {
	if d.dirty == nil || d.features&FLogAll == 0 {
		return nil
	}
	if need := logBytesFor(t); d.dirty.size < need {
		return fmt.Errorf("%w: %d bytes, the new memory table needs %d", ErrLogTooSmall, d.dirty.size, need)
	}
	return nil
}

// applyLog gives every running ring the current logging state; Dispatch
// calls it after every request (the data-path lock held).
func (d *Device) applyLog() {
	d.activeLog = nil
	if d.features&FLogAll != 0 && d.dirty != nil {
		d.activeLog = d.dirty
	}
	for i := range d.vrings {
		v := &d.vrings[i]
		if v.q == nil {
			continue
		}
		ring := d.activeLog != nil && v.addr.Flags&VringFLog != 0
		var descGPA uint64
		if ring && v.q.pk.on {
			// Packed rings take used entries in the descriptor ring, which
			// the used log address (the device event area) does not
			// cover: it is logged at its own guest physical address.
			descGPA, ring = d.mem.gpaOfUVA(v.addr.Desc)
		}
		v.q.setLog(d.activeLog, ring, v.addr.Log, descGPA)
		if d.activeLog != nil {
			d.touchRing(v)
		}
	}
}

// touchRing records the ring areas of v the device writes (see
// DirtyLog.touched): the used ring, or for a packed ring the descriptor
// ring and the device event area.
func (d *Device) touchRing(v *vring) {
	desc, used := uint64(0), uint64(6+8*uint64(v.num))
	if v.q.pk.on {
		desc, used = descSize*uint64(v.num), 4
	}
	if gpa, ok := d.mem.gpaOfUVA(v.addr.Used); ok {
		d.activeLog.touch(gpa, used)
	}
	if gpa, ok := d.mem.gpaOfUVA(v.addr.Desc); ok && desc > 0 {
		d.activeLog.touch(gpa, desc)
	}
}
