package hugepage

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// DMAMapper is an IOMMU domain that regions can be mapped into. It has the
// method set of vfio.DMAMapper, which therefore satisfies it; it is declared
// here rather than imported so that this package stays a leaf that vfio (and
// the simulator behind vfio's interfaces) may itself use for DMA memory
// without an import cycle.
type DMAMapper interface {
	MapDMA(iova uint64, mem []byte) error
	UnmapDMA(iova uint64, size uint64) error
}

// Options selects how Alloc backs a Region.
type Options struct {
	// PageSize is Page2M, Page1G (or another size the kernel offers) for
	// hugepages, or Page4K for a plain memfd of ordinary pages. Zero means
	// Page2M, or the mount's page size when Dir is set.
	PageSize PageSize
	// Dir, when set, is a hugetlbfs mount point to create the backing file
	// in, instead of using memfd_create. The file is unlinked at once, so a
	// crash cannot leak hugepages; share the descriptor, not the path.
	Dir string
	// Name labels the memory in /proc/<pid>/maps. Default "zcnet".
	Name string
}

// Region is a shared memory mapping backed by a file descriptor. Its memory
// exists in full from creation on (no page is faulted in later) and does not
// move, so a device may DMA into it once it is mapped into the device's
// IOMMU domain.
//
// MapInto, Unmap and Close change the region and must not race with each
// other or with users of IOVA; the accessors are safe for concurrent use.
type Region struct {
	mem     []byte // the bytes the caller asked for
	mapping []byte // the whole mmap, page-rounded, for munmap
	fd      int
	page    PageSize
	mapper  DMAMapper // nil unless mapped into an IOMMU domain
	iova    uint64
}

// Alloc creates a region of at least size bytes, rounded up to a whole
// number of pages, as opts describes.
//
// A hugepage request the kernel cannot meet returns a *ShortageError
// (matching ErrNoHugepages) saying how to reserve more pages; a page size
// the system does not offer returns an error matching
// ErrPageSizeUnsupported.
func Alloc(size uint64, opts Options) (*Region, error) {
	return alloc(size, opts, true)
}

// alloc is Alloc with the early counter check optional, so tests can prove
// that a shortage the counters did not predict is still a clean error.
func alloc(size uint64, opts Options, checkCounters bool) (*Region, error) {
	if size == 0 {
		return nil, errors.New("hugepage: cannot allocate an empty region")
	}
	if opts.Name == "" {
		opts.Name = "zcnet"
	}
	page := opts.PageSize
	if opts.Dir != "" {
		mp, err := mountPageSize(opts.Dir)
		if err != nil {
			return nil, err
		}
		if page != 0 && page != mp {
			return nil, fmt.Errorf("hugepage: %s serves %s pages, not %s: %w", opts.Dir, mp, page, ErrPageSizeUnsupported)
		}
		page = mp
	}
	if page == 0 {
		page = Page2M
	}
	if !page.valid() {
		return nil, fmt.Errorf("hugepage: %s is not a page size: %w", page, ErrPageSizeUnsupported)
	}
	if page == Page4K && opts.Dir == "" {
		// Ordinary memory needs no pool and no counters.
		checkCounters = false
	}
	length, ok := roundUp(size, uint64(page))
	if !ok {
		return nil, fmt.Errorf("hugepage: size %d overflows when rounded to %s pages", size, page)
	}
	need := length / uint64(page)
	if page.huge() {
		st, err := StatusOf(page)
		if err != nil {
			return nil, err
		}
		if checkCounters && st.Available() < need {
			return nil, &ShortageError{Need: need, Status: st}
		}
	}

	var fd int
	var err error
	if opts.Dir != "" {
		fd, err = createUnlinked(opts.Dir, opts.Name)
	} else {
		fd, err = createMemfd(opts.Name, page)
	}
	if err != nil {
		return nil, err
	}
	if err := unix.Ftruncate(fd, int64(length)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("hugepage: size %s-page file to %d bytes: %w", page, length, err)
	}
	// Map first: for hugetlb, mmap reserves every page the mapping needs,
	// all or nothing, and fails with ENOMEM without taking any page when the
	// pool is short, so a failed request never starves anybody else.
	r, err := mapFD(fd, 0, length, length, page)
	if err != nil {
		unix.Close(fd)
		return nil, allocFailure("map", page, need, err)
	}
	// Then make sure every page really exists. MAP_POPULATE has already
	// faulted them in, but it ignores failures (a hugetlb cgroup limit is
	// charged at fault time, for one), and a page missing here would be a
	// SIGBUS on the first store or device write. fallocate allocates
	// whatever is still missing, or fails cleanly.
	if err := unix.Fallocate(fd, 0, 0, int64(length)); err != nil {
		r.Close()
		return nil, allocFailure("allocate", page, need, err)
	}
	return r, nil
}

// Open maps size bytes of the file behind fd, starting at offset, such as a
// memory region a vhost-user front end sent over its socket. The region takes
// ownership of fd and closes it on Close. offset must be a multiple of the
// file's page size (4 KiB, or the hugepage size for hugetlbfs files), and the
// range must lie within the file.
func Open(fd int, offset, size uint64) (*Region, error) {
	if size == 0 {
		return nil, errors.New("hugepage: cannot map an empty range")
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		return nil, fmt.Errorf("hugepage: stat fd %d: %w", fd, err)
	}
	if end := offset + size; end < offset || end > uint64(st.Size) {
		// Touching a mapping beyond the end of the file raises SIGBUS.
		return nil, fmt.Errorf("hugepage: range [%#x, %#x) lies outside fd %d, which holds %#x bytes", offset, offset+size, fd, st.Size)
	}
	page, err := filePageSize(fd)
	if err != nil {
		return nil, err
	}
	if offset%uint64(page) != 0 {
		return nil, fmt.Errorf("hugepage: offset %#x into fd %d is not a multiple of its %s page size", offset, fd, page)
	}
	length, ok := roundUp(size, uint64(page))
	if !ok {
		return nil, fmt.Errorf("hugepage: size %d overflows when rounded to %s pages", size, page)
	}
	r, err := mapFD(fd, offset, length, size, page)
	if err != nil {
		return nil, fmt.Errorf("hugepage: map fd %d: %w", fd, err)
	}
	return r, nil
}

// mapFD maps length bytes of fd from offset and returns a region showing the
// first size of them.
func mapFD(fd int, offset, length, size uint64, page PageSize) (*Region, error) {
	// MAP_SHARED: the memory is the file's, so another process mapping the
	// same descriptor (a vhost-user peer, a secondary process) sees the
	// same bytes. MAP_POPULATE: fill the page tables now so the poll loop
	// never takes a page fault.
	m, err := unix.Mmap(fd, int64(offset), int(length), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		return nil, err
	}
	return &Region{mem: m[:size:size], mapping: m, fd: fd, page: page}, nil
}

// memfdSeq tells this process's backing files apart.
var memfdSeq atomic.Uint64

// createMemfd makes an anonymous memory file; hugetlb-backed unless page is
// the base page size.
func createMemfd(name string, page PageSize) (int, error) {
	flags := unix.MFD_CLOEXEC
	if page.huge() {
		// The page size is encoded as its log2 in the flag's upper bits.
		flags |= unix.MFD_HUGETLB | page.shift()<<unix.MFD_HUGE_SHIFT
	}
	fd, err := unix.MemfdCreate(name, flags)
	if errors.Is(err, unix.EINVAL) && page.huge() {
		return -1, fmt.Errorf("hugepage: memfd_create with %s pages: %w (%w)", page, ErrPageSizeUnsupported, err)
	}
	if err != nil {
		return -1, fmt.Errorf("hugepage: memfd_create: %w", err)
	}
	return fd, nil
}

// createUnlinked creates a fresh file in the hugetlbfs mount dir and unlinks
// it, leaving only the descriptor.
func createUnlinked(dir, name string) (int, error) {
	for {
		path := filepath.Join(dir, name+"-"+strconv.Itoa(os.Getpid())+"-"+strconv.FormatUint(memfdSeq.Add(1), 10))
		fd, err := unix.Open(path, unix.O_RDWR|unix.O_CREAT|unix.O_EXCL|unix.O_CLOEXEC, 0o600)
		if errors.Is(err, unix.EEXIST) {
			continue // left over by an earlier process with our pid
		}
		if err != nil {
			return -1, fmt.Errorf("hugepage: create backing file in %s: %w", dir, err)
		}
		if err := unix.Unlink(path); err != nil {
			unix.Close(fd)
			return -1, fmt.Errorf("hugepage: unlink backing file %s: %w", path, err)
		}
		return fd, nil
	}
}

// filePageSize is the page size of the file behind fd: the hugepage size for
// hugetlbfs (and MFD_HUGETLB memfd) files, the base page size otherwise.
func filePageSize(fd int) (PageSize, error) {
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		return 0, fmt.Errorf("hugepage: statfs fd %d: %w", fd, err)
	}
	if st.Type == unix.HUGETLBFS_MAGIC {
		return PageSize(st.Bsize), nil
	}
	return PageSize(os.Getpagesize()), nil
}

// allocFailure wraps a failed fallocate or mmap. For hugepages, running out
// (ENOSPC from fallocate, ENOMEM from mmap's reservation) becomes a
// *ShortageError with fresh counters; EINVAL means the size is not offered.
func allocFailure(op string, page PageSize, need uint64, err error) error {
	if page.huge() && (errors.Is(err, unix.ENOSPC) || errors.Is(err, unix.ENOMEM)) {
		st, serr := StatusOf(page)
		if serr != nil {
			return fmt.Errorf("hugepage: %s %d x %s pages: %w", op, need, page, err)
		}
		return &ShortageError{Need: need, Status: st, Err: fmt.Errorf("%s: %w", op, err)}
	}
	if errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("hugepage: %s %d x %s pages: %w (%w)", op, need, page, ErrPageSizeUnsupported, err)
	}
	return fmt.Errorf("hugepage: %s %d x %s pages: %w", op, need, page, err)
}

// roundUp rounds n up to a multiple of the power of two align.
func roundUp(n, align uint64) (uint64, bool) {
	r := (n + align - 1) &^ (align - 1)
	return r, r >= n
}

// Bytes is the region's memory. It is valid until Close.
func (r *Region) Bytes() []byte { return r.mem }

// Len is the region's size in bytes.
func (r *Region) Len() int { return len(r.mem) }

// Addr is the virtual address of the region's first byte in this process,
// the address vhost-user calls the user address. Zero after Close.
func (r *Region) Addr() uintptr { return addressOf(r.mem) }

// FD is the descriptor of the backing file. Send it to another process (over
// SCM_RIGHTS) to share the memory; it stays owned by the region.
func (r *Region) FD() int { return r.fd }

// PageSize is the size of the pages backing the region.
func (r *Region) PageSize() PageSize { return r.page }

// IOVA reports the I/O virtual address the region is mapped at, and whether
// it is mapped into an IOMMU domain at all.
func (r *Region) IOVA() (iova uint64, mapped bool) { return r.iova, r.mapper != nil }

// MapInto makes the region reachable by the devices of domain m at iova,
// which must be a multiple of the region's page size so the IOMMU can use
// pages as large as the region's. A region is mapped into at most one domain
// at a time.
func (r *Region) MapInto(m DMAMapper, iova uint64) error {
	if r.mem == nil {
		return errors.New("hugepage: map a closed region")
	}
	if r.mapper != nil {
		return fmt.Errorf("hugepage: region is already mapped at IOVA %#x; Unmap it first", r.iova)
	}
	if iova%uint64(r.page) != 0 {
		return fmt.Errorf("hugepage: IOVA %#x is not aligned to the region's %s pages", iova, r.page)
	}
	if err := m.MapDMA(iova, r.mem); err != nil {
		return fmt.Errorf("hugepage: map %d-byte region at IOVA %#x: %w", len(r.mem), iova, err)
	}
	r.mapper, r.iova = m, iova
	return nil
}

// Unmap removes the region from the IOMMU domain it was mapped into. Every
// device that might still DMA into it must be stopped first: a device that
// writes after the unmap faults, and one that the IOMMU let through would
// write into memory the region no longer owns.
func (r *Region) Unmap() error {
	if r.mapper == nil {
		return errors.New("hugepage: region is not mapped into an IOMMU domain")
	}
	if err := r.mapper.UnmapDMA(r.iova, uint64(len(r.mem))); err != nil {
		return fmt.Errorf("hugepage: unmap region at IOVA %#x: %w", r.iova, err)
	}
	r.mapper, r.iova = nil, 0
	return nil
}

// Close unmaps the region from its IOMMU domain (if mapped), unmaps it from
// this process and closes the descriptor. The pages return to the kernel once
// no other process maps or holds the file. Calling Close again does nothing.
func (r *Region) Close() error {
	if r.mapping == nil {
		return nil
	}
	var errs []error
	if r.mapper != nil {
		if err := r.Unmap(); err != nil {
			// Keep the memory: the device may still reach it.
			return err
		}
	}
	if err := unix.Munmap(r.mapping); err != nil {
		errs = append(errs, fmt.Errorf("hugepage: munmap region: %w", err))
	}
	if err := unix.Close(r.fd); err != nil {
		errs = append(errs, fmt.Errorf("hugepage: close region fd %d: %w", r.fd, err))
	}
	r.mem, r.mapping, r.fd = nil, nil, -1
	return errors.Join(errs...)
}
