package vfio

import (
	"errors"
	"fmt"
	"os"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Group is an opened IOMMU group (/dev/vfio/N, or /dev/vfio/noiommu-N in
// no-IOMMU mode): the smallest set of devices the IOMMU can isolate from each
// other, and so the unit VFIO hands to a process.
type Group struct {
	number  int
	noIOMMU bool
	file    *os.File
	cfg     config

	container atomic.Pointer[Container] // set once by Container.AddGroup

	// Guarded by the container's mutex.
	users        int  // devices Open opened through this group
	openedByOpen bool // Open created it and closes it with its last device
}

// GroupStatus is the flags word of VFIO_GROUP_GET_STATUS.
type GroupStatus uint32

// Viable reports that every device of the group is bound to a VFIO driver
// or to none, so the group may be given to user space.
func (s GroupStatus) Viable() bool { return s&groupFlagsViable != 0 }

// ContainerSet reports that the group is attached to a container.
func (s GroupStatus) ContainerSet() bool { return s&groupFlagsContainerSet != 0 }

// OpenGroup opens IOMMU group number. With WithNoIOMMU it opens the
// no-IOMMU group file instead.
func OpenGroup(number int, opts ...Option) (*Group, error) {
	cfg := newConfig(opts)
	path := cfg.groupPath(number, cfg.noIOMMU)
	f, err := os.OpenFile(path, os.O_RDWR|unix.O_CLOEXEC, 0)
	if errors.Is(err, os.ErrNotExist) {
		return nil, cfg.missingGroupError(number, path)
	}
	if err != nil {
		return nil, openError(fmt.Sprintf("IOMMU group %d", number), path, err)
	}
	return &Group{number: number, noIOMMU: cfg.noIOMMU, file: f, cfg: cfg}, nil
}

// missingGroupError explains a group number sysfs knows but /dev/vfio lacks.
func (c *config) missingGroupError(number int, path string) error {
	other := c.groupPath(number, !c.noIOMMU)
	if _, err := os.Stat(other); err == nil {
		if c.noIOMMU {
			return fmt.Errorf("open IOMMU group %d: %s does not exist but %s does: the device has a real IOMMU; open it without WithNoIOMMU", number, path, other)
		}
		return fmt.Errorf("open IOMMU group %d: %s does not exist but %s does: the device sits in a no-IOMMU group, without any DMA isolation; open it with WithNoIOMMU (zcnet --noiommu) if you accept that", number, path, other)
	}
	if _, err := os.Stat(c.containerPath()); err != nil {
		return fmt.Errorf("%w: %s does not exist: load the vfio-pci module (modprobe vfio-pci)", ErrNoVFIO, c.containerPath())
	}
	return fmt.Errorf("%w: %s does not exist: no device of IOMMU group %d is bound to vfio-pci; bind it with `zcnet bind ADDR`", ErrNotBound, path, number)
}

// Number is the group number, the N of /dev/vfio/N.
func (g *Group) Number() int { return g.number }

// Status returns VFIO_GROUP_GET_STATUS.
func (g *Group) Status() (GroupStatus, error) {
	st := groupStatus{argsz: 8}
	if _, err := ioctlPtr(g.file, reqGroupGetStatus, &st); err != nil {
		return 0, fmt.Errorf("VFIO_GROUP_GET_STATUS of IOMMU group %d: %w", g.number, err)
	}
	return GroupStatus(st.flags), nil
}

// Members lists the devices of the group with their drivers, from sysfs.
func (g *Group) Members() ([]GroupMember, error) { return g.cfg.groupMembers(g.number) }

// Container is the container the group was added to, or nil.
func (g *Group) Container() *Container { return g.container.Load() }

// OpenDevice opens the PCI function at address in the group
// (VFIO_GROUP_GET_DEVICE_FD) and reads its device, region and interrupt
// information. The group must be in a container with an IOMMU backend.
func (g *Group) OpenDevice(address string) (*PCIDevice, error) {
	addr, err := ParseAddress(address)
	if err != nil {
		return nil, err
	}
	c := g.Container()
	if c == nil {
		return nil, fmt.Errorf("open %s: IOMMU group %d is not in a container: Container.AddGroup first", addr, g.number)
	}
	fd, err := ioctlString(g.file, reqGroupGetDeviceFD, addr.String())
	if err != nil {
		return nil, getDeviceFDError(addr, g.number, err)
	}
	f := os.NewFile(uintptr(fd), "vfio device "+addr.String())
	d, err := newPCIDevice(addr, f, c)
	if err != nil {
		f.Close()
		return nil, err
	}
	return d, nil
}

func getDeviceFDError(addr PCIAddress, group int, err error) error {
	what := fmt.Sprintf("VFIO_GROUP_GET_DEVICE_FD %s", addr)
	switch {
	case errors.Is(err, unix.ENODEV):
		return fmt.Errorf("%w: %s: %w: the device is not in IOMMU group %d or not bound to vfio-pci", ErrNoDevice, what, err, group)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%w: %s: %w: the device is in use; close the other user (`fuser /dev/vfio/%d`)", ErrBusy, what, err, group)
	case errors.Is(err, unix.EPERM):
		return fmt.Errorf("%s: %w: no-IOMMU devices need CAP_SYS_RAWIO: run as root", what, err)
	case errors.Is(err, unix.EACCES):
		return fmt.Errorf("%s: %w: a VF of a PF owned by vfio-pci needs the PF's VF token", what, err)
	}
	return fmt.Errorf("%s: %w", what, err)
}

// Close closes the group, which takes it out of its container. Close the
// group's devices first.
func (g *Group) Close() error {
	if c := g.Container(); c != nil {
		c.removeGroup(g)
	}
	return g.file.Close()
}
