package guest

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/vhost"
)

// MemoryOptions shape the guest's memory.
type MemoryOptions struct {
	// Size is the total size (default 8 MiB). With Split it is divided in
	// two regions.
	Size uint64
	// Hugetlb backs the memfd with 2 MiB huge pages (MFD_HUGETLB).
	Hugetlb bool
	// Split lays memory out as two regions of one memfd, with different
	// mmap offsets and a gap in guest physical addresses between them, as
	// QEMU does around the PCI hole.
	Split bool
	// IdentityMap makes guest physical addresses equal to this process's
	// virtual addresses, as DPDK virtio-user does (IOVA as VA).
	IdentityMap bool
	// Unsealed leaves the memfd without seals, as a front end that could
	// truncate its memory under the back end would: back ends refuse it
	// unless it is hugetlb-backed.
	Unsealed bool
}

// Guest physical layout: region 0 starts above zero so that a back end
// confusing offsets with addresses fails; region 1 sits above 4 GiB.
const (
	region0GPA = 0x100000
	region1GPA = 0x1_0000_0000
)

// Memory is the guest's RAM: one memfd, mapped once here, described to the
// back end as one or two regions.
type Memory struct {
	fd      int
	buf     []byte
	regions []vhost.RegionDesc
	next    []uint64 // bump allocator per region (offset in region)
}

// NewMemory allocates guest memory.
func NewMemory(o MemoryOptions) (*Memory, error) {
	if o.Size == 0 {
		o.Size = 8 << 20
	}
	// Sealable, so it can be sealed against resizing once sized, as
	// QEMU's memory-backend-memfd does: vhost-user back ends refuse a
	// memfd that could shrink under their mapping.
	flags := unix.MFD_CLOEXEC | unix.MFD_ALLOW_SEALING
	if o.Unsealed {
		flags &^= unix.MFD_ALLOW_SEALING
	}
	if o.Hugetlb {
		flags |= unix.MFD_HUGETLB | unix.MFD_HUGE_2MB
		o.Size = (o.Size + (4<<20 - 1)) &^ (4<<20 - 1) // two whole pages at least
	}
	fd, err := unix.MemfdCreate("zcnet-guest", flags)
	if err != nil {
		return nil, fmt.Errorf("guest: memfd_create: %w", err)
	}
	if err := unix.Ftruncate(fd, int64(o.Size)); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("guest: size memfd to %d bytes: %w (huge pages reserved?)", o.Size, err)
	}
	if !o.Unsealed {
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_ADD_SEALS, unix.F_SEAL_SHRINK|unix.F_SEAL_GROW); err != nil {
			unix.Close(fd)
			return nil, fmt.Errorf("guest: seal memfd against resizing: %w", err)
		}
	}
	buf, err := unix.Mmap(fd, 0, int(o.Size), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_POPULATE)
	if err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("guest: mmap %d bytes: %w", o.Size, err)
	}
	// MAP_POPULATE fills the page tables; a write to every page also
	// takes, now, the first-write trap a hypervisor that shadows page
	// tables charges each page: a Linux guest's memory has long been
	// written by its kernel when its driver posts buffers, and a fresh
	// guest whose first frames each paid it fell behind the first 100 ms
	// of zcnet sim's traffic.
	for off := 0; off < len(buf); off += os.Getpagesize() {
		buf[off] = 0
	}
	m := &Memory{fd: fd, buf: buf}
	uva := addressOf(buf)
	if o.Split {
		half := o.Size / 2
		m.regions = []vhost.RegionDesc{
			{GuestPhysAddr: region0GPA, Size: half, UserAddr: uva, MmapOffset: 0},
			{GuestPhysAddr: region1GPA, Size: half, UserAddr: uva + half, MmapOffset: half},
		}
	} else {
		m.regions = []vhost.RegionDesc{{GuestPhysAddr: region0GPA, Size: o.Size, UserAddr: uva}}
	}
	if o.IdentityMap {
		for i := range m.regions {
			m.regions[i].GuestPhysAddr = m.regions[i].UserAddr
		}
	}
	m.next = make([]uint64, len(m.regions))
	return m, nil
}

// Close unmaps the memory and closes the memfd.
func (m *Memory) Close() error {
	err := unix.Munmap(m.buf)
	return errors.Join(err, unix.Close(m.fd))
}

// FD is the memfd, sent with SET_MEM_TABLE.
func (m *Memory) FD() int { return m.fd }

// Regions describes the memory as SET_MEM_TABLE does.
func (m *Memory) Regions() []vhost.RegionDesc { return append([]vhost.RegionDesc(nil), m.regions...) }

// Table is a vhost memory table over this process's own mapping of the
// guest memory, for unit tests that run a back-end queue without a socket.
func (m *Memory) Table() (*vhost.MemoryTable, error) {
	regs := make([]vhost.Region, len(m.regions))
	for i, r := range m.regions {
		regs[i] = vhost.Region{GuestPhysAddr: r.GuestPhysAddr, Size: r.Size, UserAddr: r.UserAddr,
			MmapOffset: r.MmapOffset, Host: m.buf[r.MmapOffset : r.MmapOffset+r.Size]}
	}
	return vhost.NewMemoryTable(regs)
}

// AllocIn takes size bytes aligned to align from region i and returns
// their guest physical address.
func (m *Memory) AllocIn(i int, size, align uint64) (uint64, error) {
	r := m.regions[i]
	off := (m.next[i] + align - 1) &^ (align - 1)
	if off+size > r.Size {
		return 0, fmt.Errorf("guest: region %d out of memory (%d bytes wanted, %d left)", i, size, r.Size-min(off, r.Size))
	}
	m.next[i] = off + size
	return r.GuestPhysAddr + off, nil
}

// Alloc takes memory from the first region with room.
func (m *Memory) Alloc(size, align uint64) (uint64, error) {
	var err error
	for i := range m.regions {
		var gpa uint64
		if gpa, err = m.AllocIn(i, size, align); err == nil {
			return gpa, nil
		}
	}
	return 0, err
}

// Bytes returns guest memory [gpa, gpa+n), which must lie in one region.
func (m *Memory) Bytes(gpa, n uint64) []byte {
	for _, r := range m.regions {
		if gpa >= r.GuestPhysAddr && gpa-r.GuestPhysAddr+n <= r.Size {
			off := r.MmapOffset + gpa - r.GuestPhysAddr
			return m.buf[off : off+n : off+n]
		}
	}
	panic(fmt.Sprintf("guest: address %#x+%d outside guest memory", gpa, n))
}

// UVA is the front-end user address of gpa (what SET_VRING_ADDR carries).
func (m *Memory) UVA(gpa uint64) uint64 {
	for _, r := range m.regions {
		if gpa >= r.GuestPhysAddr && gpa-r.GuestPhysAddr < r.Size {
			return r.UserAddr + gpa - r.GuestPhysAddr
		}
	}
	panic(fmt.Sprintf("guest: address %#x outside guest memory", gpa))
}

// End is the first guest physical address after the last region.
func (m *Memory) End() uint64 {
	r := m.regions[len(m.regions)-1]
	return r.GuestPhysAddr + r.Size
}
