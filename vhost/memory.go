package vhost

import (
	"errors"
	"fmt"
	"math"
	"os"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// Region is one range of guest memory mapped into this process.
type Region struct {
	// GuestPhysAddr is where the guest sees the region; descriptor
	// addresses are translated with it.
	GuestPhysAddr uint64
	// Size is the length in bytes of the region.
	Size uint64
	// UserAddr is where the front-end process has the region mapped; ring
	// addresses from SET_VRING_ADDR are translated with it.
	UserAddr uint64
	// MmapOffset is the region's offset in the file the front end sent.
	MmapOffset uint64
	// Host is the region in this process: len(Host) == Size.
	Host []byte

	mapping []byte // whole mmap (from file offset 0), nil if not ours
}

// MemoryHook learns about guest memory as it comes and goes, so that the
// zero-copy engine can DMA-map each region (one IOVA range per region) when
// a memory table arrives. UnmapRegion is called before the memory is
// unmapped from this process; after it returns the engine must no longer
// let a device reach the region.
//
// Both methods are called on the protocol goroutine without the data-path
// lock held (mapping can be slow and pollers must not wait for it); a hook
// that shares state with pollers synchronises on its own, e.g. by taking
// the device's data-path lock.
type MemoryHook interface {
	MapRegion(r Region) error
	UnmapRegion(r Region) error
}

// RingHook is implemented by a MemoryHook whose consumer holds guest
// buffers outside the virtqueue, as a zero-copy engine does when it posts
// guest chains into a NIC ring. The device calls StopRing, synchronously,
// whenever a running ring is about to stop being handed to pollers or its
// memory is about to go away:
//
//   - GET_VRING_BASE, before the ring base is read and replied;
//   - SET_VRING_ENABLE 0 on an enabled running ring;
//   - RESET_OWNER, RESET_DEVICE and the front end disconnecting;
//   - a memory table change that retires regions (SET_MEM_TABLE over an
//     existing table, REM_MEM_REG), before the swap and thus before the old
//     regions are released through UnmapRegion.
//
// StopRing runs with the data-path lock held, so no poller is inside a
// polling round of this device, and q and its memory are still valid. It
// must make the hardware let go of every chain popped from q (stop the
// queue and wait until the device confirms), give each one back with Push
// (0 bytes for a buffer never written, the real length for a completed
// one), Flush, and return only then: the ring base the front end gets
// counts every popped chain as used, so nothing is lost or returned twice
// when the ring resumes. It must not call back into the Device (the lock
// is not reentrant). It may be called for a queue the hook never used.
type RingHook interface {
	StopRing(q *Virtqueue)
}

// Errors from address translation.
var (
	ErrNoMemory     = errors.New("vhost: no guest memory table")
	ErrBadAddress   = errors.New("vhost: guest address outside the memory table")
	ErrLengthWraps  = errors.New("vhost: guest address plus length overflows")
	ErrTooManySegs  = errors.New("vhost: buffer needs more segments than the caller provided")
	ErrRegionLayout = errors.New("vhost: memory regions overlap or are empty")
)

// Errors refusing a memory table for what backs it, not for its layout.
var (
	// ErrNotSharedMemory: a region's descriptor is not a memfd, hugetlbfs
	// or tmpfs file. Anything else (/dev/zero, a regular file on disk, a
	// device) would either not be the guest's memory at all or make this
	// process allocate (or pin) memory on the front end's word.
	ErrNotSharedMemory = errors.New("vhost: guest memory is not a shared-memory file (memfd, hugetlbfs or tmpfs)")
	// ErrUnsealed: a memfd without F_SEAL_SHRINK could be truncated under
	// our mapping, and the next access would SIGBUS the whole process.
	ErrUnsealed = errors.New("vhost: guest memfd is not sealed against shrinking (F_SEAL_SHRINK)")
	// ErrMemLimit: the table describes more memory than the device may map
	// (Config.MemLimit).
	ErrMemLimit = errors.New("vhost: guest memory over the device's limit")
)

// DefaultMemLimit is the memory one device may map when Config.MemLimit is
// 0: 64 GiB holds any VM zcnet is meant to serve (network function guests
// have a few GiB, large ones 32 GiB) plus hot-plugged memory, while a front
// end still cannot describe terabytes and have every byte of it mapped and,
// with zero copy, pinned by VFIO in this process.
const DefaultMemLimit = 64 << 30

// MemoryTable is an immutable set of guest memory regions. A new table
// replaces the old one as a whole (SET_MEM_TABLE, ADD/REM_MEM_REG).
type MemoryTable struct {
	regions []Region
}

// NewMemoryTable builds a table over memory the caller already has mapped
// (Region.Host set). It checks that regions are non-empty, that Host has the
// right length and that neither guest physical nor user ranges overlap.
func NewMemoryTable(regions []Region) (*MemoryTable, error) {
	t := &MemoryTable{regions: append([]Region(nil), regions...)}
	if err := t.check(); err != nil {
		return nil, err
	}
	return t, nil
}

func (t *MemoryTable) check() error {
	for i, r := range t.regions {
		if r.Size == 0 || uint64(len(r.Host)) != r.Size {
			return fmt.Errorf("%w: region %d size %d, host %d bytes", ErrRegionLayout, i, r.Size, len(r.Host))
		}
		if r.GuestPhysAddr+r.Size < r.GuestPhysAddr || r.UserAddr+r.Size < r.UserAddr {
			return fmt.Errorf("%w: region %d wraps the address space", ErrRegionLayout, i)
		}
		for j := range i {
			o := t.regions[j]
			if overlaps(r.GuestPhysAddr, r.Size, o.GuestPhysAddr, o.Size) ||
				overlaps(r.UserAddr, r.Size, o.UserAddr, o.Size) {
				return fmt.Errorf("%w: regions %d and %d overlap", ErrRegionLayout, j, i)
			}
		}
	}
	return nil
}

func overlaps(a, alen, b, blen uint64) bool { return a < b+blen && b < a+alen }

// Regions returns a copy of the table's regions.
func (t *MemoryTable) Regions() []Region { return append([]Region(nil), t.regions...) }

// find returns the region holding addr (by guest physical address if gpa,
// else by front-end user address), its index and addr's offset in it.
func (t *MemoryTable) find(addr uint64, gpa bool) (*Region, int, uint64, bool) {
	if t == nil {
		return nil, 0, 0, false
	}
	for i := range t.regions {
		r := &t.regions[i]
		base := r.UserAddr
		if gpa {
			base = r.GuestPhysAddr
		}
		// addr-base < Size is overflow-safe: it also rejects addr < base.
		if off := addr - base; addr >= base && off < r.Size {
			return r, i, off, true
		}
	}
	return nil, 0, 0, false
}

func (t *MemoryTable) translate(addr, n uint64, gpa bool) ([]byte, error) {
	if t == nil {
		return nil, ErrNoMemory
	}
	if addr+n < addr {
		return nil, ErrLengthWraps
	}
	r, _, off, ok := t.find(addr, gpa)
	if !ok || n > r.Size-off {
		return nil, ErrBadAddress
	}
	return r.Host[off : off+n : off+n], nil
}

// TranslateGPA returns the host memory of the guest physical range
// [gpa, gpa+n), which must lie within one region.
func (t *MemoryTable) TranslateGPA(gpa, n uint64) ([]byte, error) { return t.translate(gpa, n, true) }

// TranslateUVA returns the host memory of the front-end virtual range
// [uva, uva+n), which must lie within one region.
func (t *MemoryTable) TranslateUVA(uva, n uint64) ([]byte, error) { return t.translate(uva, n, false) }

// Segment is a piece of a guest buffer that is contiguous in host memory.
type Segment struct {
	GPA      uint64 // guest physical address of Buf[0]
	Buf      []byte // the bytes, in this process
	Writable bool   // the device may write (VIRTQ_DESC_F_WRITE)
}

// AppendGPA appends to segs the host pieces of the guest physical range
// [gpa, gpa+n): one segment per region the range crosses, so a buffer that
// straddles two guest-adjacent regions is split correctly. It fails with
// ErrBadAddress if any byte lies outside the table. It never grows segs,
// so it never allocates: if segs runs out of capacity it still checks the
// whole range and then reports ErrTooManySegs.
func (t *MemoryTable) AppendGPA(segs []Segment, gpa, n uint64, writable bool) ([]Segment, error) {
	hint := -1
	return t.appendGPA(segs, gpa, n, writable, &hint)
}

// appendGPA is AppendGPA that tries the region *hint first and leaves in
// *hint the region of the range's last byte. A queue's buffers nearly
// always come from one region (the guest's packet pool), so a caller that
// keeps the hint between calls skips the region search, which would
// otherwise run for every descriptor. Any value of *hint is safe: it is
// only a guess, checked like every other region.
func (t *MemoryTable) appendGPA(segs []Segment, gpa, n uint64, writable bool, hint *int) ([]Segment, error) {
	if t == nil {
		return segs, ErrNoMemory
	}
	if buf, ok := t.hinted(gpa, n, *hint); ok {
		if len(segs) == cap(segs) {
			return segs, ErrTooManySegs
		}
		segs = segs[:len(segs)+1]
		setSegment(&segs[len(segs)-1], gpa, buf, writable)
		return segs, nil
	}
	if gpa+n < gpa {
		return segs, ErrLengthWraps
	}
	full := false
	for n > 0 {
		r, i, off, ok := t.find(gpa, true)
		if !ok {
			return segs, ErrBadAddress
		}
		*hint = i
		k := min(n, r.Size-off)
		if len(segs) == cap(segs) {
			full = true
		} else {
			segs = segs[:len(segs)+1]
			setSegment(&segs[len(segs)-1], gpa, r.Host[off:off+k:off+k], writable)
		}
		gpa += k
		n -= k
	}
	if full {
		return segs, ErrTooManySegs
	}
	return segs, nil
}

// hinted returns the host memory of the guest physical range [gpa, gpa+n)
// if it lies wholly within region i (any i is safe: it is checked), and
// false otherwise or for an empty range. off < Size and n <= Size-off
// keep gpa+n inside a region that check() proved does not wrap.
func (t *MemoryTable) hinted(gpa, n uint64, i int) ([]byte, bool) {
	if uint(i) >= uint(len(t.regions)) || n == 0 {
		return nil, false
	}
	r := &t.regions[i]
	off := gpa - r.GuestPhysAddr
	if gpa < r.GuestPhysAddr || off >= r.Size || n > r.Size-off {
		return nil, false
	}
	return r.Host[off : off+n : off+n], true
}

// setSegment fills *s field by field. Appending a Segment literal instead
// makes the compiler build it on the stack with 8-byte stores and copy it
// with 16-byte loads, which cannot be forwarded from those stores: each
// such load waits until every older store has reached the cache, and on
// the data path those include stores into guest buffers and used rings
// whose cache lines the guest's core holds. In the testpmd benchmark that
// wait was most of the back end's time per received packet. For the same
// reason the data path reads segments by field (segs[i].Buf), never by
// copying a whole Segment (for _, s := range segs) just after Pop wrote it.
func setSegment(s *Segment, gpa uint64, buf []byte, writable bool) {
	s.GPA = gpa
	s.Buf = buf
	s.Writable = writable
}

// mapRegions mmaps the regions the front end described, one descriptor
// each, and reports them to hook. The regions plus the used bytes the
// device keeps mapped may add up to limit bytes; that is checked before
// anything is mapped.
// Descriptors are always closed: a mapping keeps the memory alive on its
// own. On failure nothing stays mapped.
func mapRegions(descs []RegionDesc, fds []int, hook MemoryHook, used, limit uint64) (t *MemoryTable, err error) {
	defer closeFDs(fds)
	if err := checkLimit(descs, used, limit); err != nil {
		return nil, err
	}
	t = &MemoryTable{regions: make([]Region, 0, len(descs))}
	defer func() {
		if err != nil {
			t.release(nil)
		}
	}()
	for i, d := range descs {
		r, err := mapRegion(d, fds[i])
		if err != nil {
			return t, fmt.Errorf("region %d (gpa %#x size %#x): %w", i, d.GuestPhysAddr, d.Size, err)
		}
		t.regions = append(t.regions, r)
	}
	if err := t.check(); err != nil {
		return t, err
	}
	for i, r := range t.regions {
		if hook == nil {
			break
		}
		if err := hook.MapRegion(r); err != nil {
			// Undo the hook for the regions it accepted.
			for _, done := range t.regions[:i] {
				_ = hook.UnmapRegion(done)
			}
			return t, fmt.Errorf("DMA-mapping region %d (gpa %#x): %w", i, r.GuestPhysAddr, err)
		}
	}
	return t, nil
}

// checkLimit refuses regions that, on top of the used bytes the device
// already has mapped, add up to more than limit, without letting a front
// end's sizes wrap the sum.
func checkLimit(descs []RegionDesc, used, limit uint64) error {
	total := used
	for _, d := range descs {
		if total+d.Size < total {
			total = math.MaxUint64
			break
		}
		total += d.Size
	}
	if total > limit {
		return fmt.Errorf("%w: %d bytes of guest memory with the %d already mapped, %d allowed (raise the device's memory limit if the guest really has that much)", ErrMemLimit, total-used, used, limit)
	}
	return nil
}

// holds reports whether host address addr lies in one of t's regions.
func (t *MemoryTable) holds(addr uintptr) bool {
	if t == nil {
		return false
	}
	for _, r := range t.regions {
		if len(r.Host) > 0 && addr >= hostAddr(r.Host) && addr-hostAddr(r.Host) < uintptr(len(r.Host)) {
			return true
		}
	}
	return false
}

// size is the guest memory the table holds, in bytes.
func (t *MemoryTable) size() uint64 {
	var n uint64
	if t != nil {
		for _, r := range t.regions {
			n += r.Size
		}
	}
	return n
}

func mapRegion(d RegionDesc, fd int) (Region, error) {
	if d.Size == 0 {
		return Region{}, fmt.Errorf("%w: zero-sized region", ErrRegionLayout)
	}
	length := d.MmapOffset + d.Size
	if length < d.MmapOffset || length > 1<<47 {
		return Region{}, fmt.Errorf("%w: mmap offset %#x + size %#x", ErrLengthWraps, d.MmapOffset, d.Size)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return Region{}, fmt.Errorf("fstat region fd: %w", err)
	}
	if err := checkBacking(fd, &st); err != nil {
		return Region{}, err
	}
	// Touching a mapping past the end of the file raises SIGBUS.
	if uint64(st.Size) < d.MmapOffset+d.Size {
		return Region{}, fmt.Errorf("%w: file of %d bytes is shorter than offset+size %#x", ErrBadAddress, st.Size, d.MmapOffset+d.Size)
	}
	// hugetlbfs files must be mapped in whole huge pages; st_blksize is the
	// page size for them (4 KiB for memfd and tmpfs).
	if align := uint64(st.Blksize); align > 0 && align&(align-1) == 0 {
		length = (length + align - 1) &^ (align - 1)
	}
	m, err := unix.Mmap(fd, 0, int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return Region{}, fmt.Errorf("mmap %d bytes of guest memory: %w (is the front end's memory shared, e.g. memory-backend-memfd,share=on?)", length, err)
	}
	_ = unix.Madvise(m, unix.MADV_DONTDUMP)
	end := d.MmapOffset + d.Size
	return Region{
		GuestPhysAddr: d.GuestPhysAddr, Size: d.Size, UserAddr: d.UserAddr, MmapOffset: d.MmapOffset,
		Host: m[d.MmapOffset:end:end], mapping: m,
	}, nil
}

// checkBacking accepts only files that are memory shared with the front
// end: a memfd (which lives on the kernel's internal tmpfs, or on its
// internal hugetlbfs with MFD_HUGETLB), a hugetlbfs file, or a tmpfs file
// (/dev/shm, memory-backend-file on tmpfs). Mapping anything else is either
// not the guest's memory at all or, like /dev/zero, memory this process
// allocates when it (or the NIC) touches it. A memfd on tmpfs must also be
// sealed against shrinking: its creator could have sealed it (QEMU's
// memory-backend-memfd does by default), and without the seal a truncate
// turns our next access into a SIGBUS that kills every guest. hugetlbfs
// files and plain tmpfs files are accepted unsealed: those made with
// open(2) cannot be sealed at all, and DPDK's hugepage memfds are not;
// faults on them are contained elsewhere.
func checkBacking(fd int, st *unix.Stat_t) error {
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		return fmt.Errorf("%w: %s", ErrNotSharedMemory, describeFD(fd, st))
	}
	var fs unix.Statfs_t
	if err := unix.Fstatfs(fd, &fs); err != nil {
		return fmt.Errorf("statfs region fd: %w", err)
	}
	switch uint32(fs.Type) {
	case unix.HUGETLBFS_MAGIC:
		return nil
	case unix.TMPFS_MAGIC:
	default:
		return fmt.Errorf("%w: %s on a file system of type %#x", ErrNotSharedMemory, describeFD(fd, st), uint32(fs.Type))
	}
	seals, err := unix.FcntlInt(uintptr(fd), unix.F_GET_SEALS, 0)
	if err == nil && seals&unix.F_SEAL_SHRINK != 0 {
		return nil
	}
	// Seals alone cannot tell a memfd from a tmpfs file: both report
	// F_SEAL_SEAL when they were made unsealable. The name can: memfds
	// are "/memfd:NAME (deleted)" in /proc.
	if link, _ := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); strings.HasPrefix(link, "/memfd:") {
		return fmt.Errorf("%w: %s has seals %#x; create it with MFD_ALLOW_SEALING and add F_SEAL_SHRINK (QEMU: memory-backend-memfd with seal=on, the default)", ErrUnsealed, link, seals)
	}
	return nil
}

// statSharedFile checks that fd, a buffer the front end shares with the
// back end beside guest memory (the dirty log, the inflight buffer), is
// shared memory as checkBacking requires and holds at least end bytes, and
// returns its stat. what names the buffer in errors, endName what end is
// (the message's fields); short wraps a file too short for end.
func statSharedFile(fd int, what string, end uint64, endName string, short error) (unix.Stat_t, error) {
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return st, fmt.Errorf("fstat %s fd: %w", what, err)
	}
	if err := checkBacking(fd, &st); err != nil {
		return st, fmt.Errorf("%s: %w", what, err)
	}
	if uint64(st.Size) < end {
		return st, fmt.Errorf("%w: %s file of %d bytes is shorter than %s %#x", short, what, st.Size, endName, end)
	}
	return st, nil
}

// describeFD names what a refused region descriptor is, for the error the
// front end and the log get.
func describeFD(fd int, st *unix.Stat_t) string {
	kind := "file"
	switch st.Mode & unix.S_IFMT {
	case unix.S_IFCHR:
		kind = "character device"
	case unix.S_IFBLK:
		kind = "block device"
	case unix.S_IFIFO:
		kind = "pipe"
	case unix.S_IFSOCK:
		kind = "socket"
	case unix.S_IFDIR:
		kind = "directory"
	}
	if link, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd)); err == nil {
		return fmt.Sprintf("%s %s", kind, link)
	}
	return kind
}

// release reports the table's regions to hook as going away, then unmaps
// the ones this package mapped. It is called only after no poller can
// touch the table any more.
func (t *MemoryTable) release(hook MemoryHook) error {
	if t == nil {
		return nil
	}
	var errs []error
	for _, r := range t.regions {
		errs = append(errs, releaseRegion(r, hook))
	}
	t.regions = nil
	return errors.Join(errs...)
}

// releaseRegion tells hook the region is going away, then unmaps it if
// this package mapped it. The hook goes first: a device must not be able to
// reach memory that is no longer there.
func releaseRegion(r Region, hook MemoryHook) error {
	var errs []error
	if hook != nil {
		if err := hook.UnmapRegion(r); err != nil {
			errs = append(errs, fmt.Errorf("DMA-unmapping region gpa %#x: %w", r.GuestPhysAddr, err))
		}
	}
	if r.mapping != nil {
		if err := unix.Munmap(r.mapping); err != nil {
			errs = append(errs, fmt.Errorf("munmap region gpa %#x: %w", r.GuestPhysAddr, err))
		}
	}
	return errors.Join(errs...)
}

// withRegion returns a new table with r added (ADD_MEM_REG).
func (t *MemoryTable) withRegion(r Region) (*MemoryTable, error) {
	n := &MemoryTable{}
	if t != nil {
		n.regions = append(n.regions, t.regions...)
	}
	n.regions = append(n.regions, r)
	if err := n.check(); err != nil {
		return nil, err
	}
	return n, nil
}

// withoutRegion returns a new table without the region matching d
// (REM_MEM_REG matches on guest address, user address and size), and the
// removed region.
func (t *MemoryTable) withoutRegion(d RegionDesc) (*MemoryTable, Region, bool) {
	if t == nil {
		return nil, Region{}, false
	}
	for i, r := range t.regions {
		if r.GuestPhysAddr == d.GuestPhysAddr && r.UserAddr == d.UserAddr && r.Size == d.Size {
			n := &MemoryTable{regions: make([]Region, 0, len(t.regions)-1)}
			n.regions = append(n.regions, t.regions[:i]...)
			n.regions = append(n.regions, t.regions[i+1:]...)
			return n, r, true
		}
	}
	return t, Region{}, false
}

// gpaOfUVA translates a front-end user address to a guest physical one.
func (t *MemoryTable) gpaOfUVA(uva uint64) (uint64, bool) {
	r, _, off, ok := t.find(uva, false)
	if !ok {
		return 0, false
	}
	return r.GuestPhysAddr + off, true
}
