package vfio

import (
	"errors"
	"fmt"
	"os"
	"sync"

	"golang.org/x/sys/unix"
)

// Container is a VFIO container (/dev/vfio/vfio): one IOMMU domain. The
// groups added to it share one I/O address space, and DMA mappings made on it
// apply to every device of every group in it. It implements DMAMapper.
type Container struct {
	file *os.File
	cfg  config

	// acquireMu serializes Open's find-or-open of a group: two opens of
	// the same group file would collide (the kernel allows one).
	acquireMu sync.Mutex

	mu     sync.Mutex
	groups map[int]*Group // attached groups by number
	iommu  Extension      // backend set by VFIO_SET_IOMMU; 0 until the first group
	// users counts devices Open placed in the container; a container Open
	// created itself is closed when the last of them is.
	users        int
	openedByOpen bool
}

var _ DMAMapper = (*Container)(nil)

// OpenContainer opens /dev/vfio/vfio, checks the API version and that the
// kernel offers the IOMMU backend the options ask for (Type1v2, or no-IOMMU
// with WithNoIOMMU).
func OpenContainer(opts ...Option) (*Container, error) {
	cfg := newConfig(opts)
	path := cfg.containerPath()
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s does not exist: load the vfio-pci module (modprobe vfio-pci)", ErrNoVFIO, path)
	}
	if err != nil {
		return nil, openError("the VFIO container", path, err)
	}
	c := &Container{file: f, cfg: cfg, groups: make(map[int]*Group)}
	if err := c.checkKernel(); err != nil {
		f.Close()
		return nil, err
	}
	return c, nil
}

func (c *Container) checkKernel() error {
	v, err := c.APIVersion()
	if err != nil {
		return fmt.Errorf("%w: %s does not answer VFIO_GET_API_VERSION (%w): it is not the VFIO container device", ErrNoVFIO, c.file.Name(), err)
	}
	if v != apiVersion {
		return fmt.Errorf("%w: kernel VFIO API version %d, this program speaks version %d", ErrNoVFIO, v, apiVersion)
	}
	want := c.wantIOMMU()
	ok, err := c.CheckExtension(want)
	if err != nil {
		return err
	}
	if !ok {
		if want == NoIOMMU {
			return fmt.Errorf("%w: the kernel does not offer no-IOMMU mode: it needs CONFIG_VFIO_NOIOMMU and `modprobe vfio enable_unsafe_noiommu_mode=1` (or echo 1 > /sys/module/vfio/parameters/enable_unsafe_noiommu_mode)", ErrNoVFIO)
		}
		return fmt.Errorf("%w: the kernel offers no %v IOMMU backend: load it with `modprobe vfio_iommu_type1`", ErrNoVFIO, want)
	}
	return nil
}

func (c *Container) wantIOMMU() Extension {
	if c.cfg.noIOMMU {
		return NoIOMMU
	}
	return Type1v2IOMMU
}

// APIVersion returns VFIO_GET_API_VERSION (always 0 on a working kernel).
func (c *Container) APIVersion() (int, error) {
	return ioctlArg(c.file, reqGetAPIVersion, 0)
}

// CheckExtension reports whether the kernel supports ext
// (VFIO_CHECK_EXTENSION). Before an IOMMU backend is set it asks all loaded
// backends; afterwards only the one in use.
func (c *Container) CheckExtension(ext Extension) (bool, error) {
	n, err := ioctlArg(c.file, reqCheckExtension, uintptr(ext))
	if err != nil {
		return false, fmt.Errorf("VFIO_CHECK_EXTENSION %v: %w", ext, err)
	}
	return n > 0, nil
}

// IOMMU returns the backend in use, 0 before the first group is added.
func (c *Container) IOMMU() Extension {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.iommu
}

// AddGroup attaches g to the container (VFIO_GROUP_SET_CONTAINER) after
// checking that the group is viable. The first group also sets the IOMMU
// backend (VFIO_SET_IOMMU): the kernel needs a group in the container before
// it can pick the IOMMU to program.
func (c *Container) AddGroup(g *Group) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if g.noIOMMU != c.cfg.noIOMMU {
		return fmt.Errorf("add IOMMU group %d: a no-IOMMU group and an IOMMU container (or the reverse) cannot be mixed: open both with or both without WithNoIOMMU", g.number)
	}
	if c.groups[g.number] != nil {
		return fmt.Errorf("add IOMMU group %d: already in this container", g.number)
	}
	st, err := g.Status()
	if err != nil {
		return err
	}
	if st.ContainerSet() {
		return fmt.Errorf("add IOMMU group %d: the group is already in a container", g.number)
	}
	if !st.Viable() {
		return g.cfg.notViableError(g.number)
	}
	fd := int32(c.file.Fd())
	if _, err := ioctlPtr(g.file, reqGroupSetContainer, &fd); err != nil {
		return fmt.Errorf("VFIO_GROUP_SET_CONTAINER for IOMMU group %d: %w", g.number, err)
	}
	if c.iommu == 0 {
		want := c.wantIOMMU()
		if _, err := ioctlArg(c.file, reqSetIOMMU, uintptr(want)); err != nil {
			// Leave the container as we found it: empty and without IOMMU.
			_, _ = ioctlArg(g.file, reqGroupUnsetContainer, 0)
			return setIOMMUError(want, err)
		}
		c.iommu = want
	}
	c.groups[g.number] = g
	g.container.Store(c)
	return nil
}

func setIOMMUError(want Extension, err error) error {
	switch {
	case errors.Is(err, unix.EPERM) && want == NoIOMMU:
		return fmt.Errorf("VFIO_SET_IOMMU %v: %w: no-IOMMU mode needs CAP_SYS_RAWIO: run as root", want, err)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("VFIO_SET_IOMMU %v: %w: the IOMMU cannot remap interrupts, so VFIO refuses the device; enable interrupt remapping (intremap=on, x2APIC) or accept the risk with `modprobe vfio_iommu_type1 allow_unsafe_interrupts=1`", want, err)
	}
	return fmt.Errorf("VFIO_SET_IOMMU %v: %w", want, err)
}

// removeGroup forgets g after it left the container; the kernel drops the
// IOMMU backend with the last group.
func (c *Container) removeGroup(g *Group) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.groups[g.number] == g {
		delete(c.groups, g.number)
	}
	if len(c.groups) == 0 {
		c.iommu = 0
	}
}

// PageSizes returns the bitmap of IOMMU page sizes the container's domain
// supports (VFIO_IOMMU_GET_INFO); the smallest set bit is the alignment
// MapDMA needs.
func (c *Container) PageSizes() (uint64, error) {
	info := iommuType1Info{argsz: 24}
	if _, err := ioctlPtr(c.file, reqIOMMUGetInfo, &info); err != nil {
		return 0, fmt.Errorf("VFIO_IOMMU_GET_INFO: %w", err)
	}
	if info.flags&iommuInfoPgsizes == 0 {
		return 0, fmt.Errorf("VFIO_IOMMU_GET_INFO: the kernel reported no page sizes")
	}
	return info.iovaPgsizes, nil
}

// MapDMA makes mem readable and writable by the devices of the container at
// I/O virtual address iova (VFIO_IOMMU_MAP_DMA). The kernel pins the pages;
// they count against RLIMIT_MEMLOCK unless the process has CAP_IPC_LOCK.
func (c *Container) MapDMA(iova uint64, mem []byte) error {
	size := uint64(len(mem))
	if err := c.checkDMA(iova, size); err != nil {
		return err
	}
	vaddr := bytesAddress(mem)
	if vaddr%pageSize != 0 {
		return fmt.Errorf("map DMA: memory at %#x is not page aligned: use mmap'd (hugepage) memory", vaddr)
	}
	m := dmaMap{argsz: 32, flags: dmaMapFlagRead | dmaMapFlagWrite, vaddr: vaddr, iova: iova, size: size}
	if _, err := ioctlPtr(c.file, reqIOMMUMapDMA, &m); err != nil {
		return mapDMAError(iova, size, err)
	}
	return nil
}

func mapDMAError(iova, size uint64, err error) error {
	what := fmt.Sprintf("VFIO_IOMMU_MAP_DMA of IOVA [%#x, %#x)", iova, iova+size)
	switch {
	case errors.Is(err, unix.EEXIST):
		return fmt.Errorf("%s: %w: the range overlaps an existing mapping; unmap it first or pick another IOVA", what, err)
	case errors.Is(err, unix.ENOMEM):
		return fmt.Errorf("%s: %w: cannot pin %d bytes: raise the locked-memory limit (ulimit -l, LimitMEMLOCK=) or run with CAP_IPC_LOCK", what, err, size)
	case errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("%s: %w: too many DMA mappings (vfio_iommu_type1 dma_entry_limit): map fewer, larger regions", what, err)
	case errors.Is(err, unix.EFAULT):
		return fmt.Errorf("%s: %w: the memory is not mapped in this process", what, err)
	case errors.Is(err, unix.EINVAL):
		return fmt.Errorf("%s: %w: the IOMMU rejects the range (alignment to its page size, or outside its aperture; see PageSizes)", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// UnmapDMA removes the mapping at iova of size bytes (VFIO_IOMMU_UNMAP_DMA).
// It fails if nothing, or only part of the range, was mapped.
func (c *Container) UnmapDMA(iova, size uint64) error {
	if err := c.checkDMA(iova, size); err != nil {
		return err
	}
	u := dmaUnmap{argsz: 24, iova: iova, size: size}
	if _, err := ioctlPtr(c.file, reqIOMMUUnmapDMA, &u); err != nil {
		if errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("VFIO_IOMMU_UNMAP_DMA of IOVA [%#x, %#x): %w: the range cuts through a mapping; unmap exactly what MapDMA mapped", iova, iova+size, err)
		}
		return fmt.Errorf("VFIO_IOMMU_UNMAP_DMA of IOVA [%#x, %#x): %w", iova, iova+size, err)
	}
	// The kernel writes back how much it unmapped.
	if u.size != size {
		return fmt.Errorf("VFIO_IOMMU_UNMAP_DMA of IOVA [%#x, %#x): only %d of %d bytes were mapped", iova, iova+size, u.size, size)
	}
	return nil
}

var pageSize = uint64(os.Getpagesize())

func (c *Container) checkDMA(iova, size uint64) error {
	switch c.IOMMU() {
	case NoIOMMU:
		return fmt.Errorf("%w: the container runs without an IOMMU, so there is nothing to program: the device sees physical addresses and nothing isolates its DMA. Give it the physical addresses of pinned memory (/proc/self/pagemap) instead, or enable the IOMMU (intel_iommu=on) to get isolation and MapDMA", ErrDMAWithoutIOMMU)
	case 0:
		return fmt.Errorf("DMA mapping: the container has no IOMMU backend yet: add a group first (Open does)")
	}
	if size == 0 {
		return fmt.Errorf("DMA mapping at IOVA %#x: empty range", iova)
	}
	if iova%pageSize != 0 || size%pageSize != 0 {
		return fmt.Errorf("DMA mapping at IOVA %#x, %d bytes: IOVA and size must be multiples of the %d-byte page", iova, size, pageSize)
	}
	if iova+size < iova {
		return fmt.Errorf("DMA mapping at IOVA %#x, %d bytes: range wraps around the address space", iova, size)
	}
	return nil
}

// Close closes the container. Close the devices and groups in it first; the
// kernel keeps the IOMMU domain alive while a group still refers to it.
func (c *Container) Close() error {
	return c.file.Close()
}
