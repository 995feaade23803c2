package vfio

import (
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// Errors callers can test for with errors.Is. Every error the package returns
// wraps one of these (or an errno, or both) and adds what to do about it.
// Permission problems wrap the errno, so errors.Is(err, fs.ErrPermission)
// holds for them.
var (
	// ErrNoVFIO: /dev/vfio/vfio is missing, the VFIO modules are not loaded.
	ErrNoVFIO = errors.New("vfio: VFIO is not available")
	// ErrNoDevice: no PCI function at that address.
	ErrNoDevice = errors.New("vfio: no such PCI device")
	// ErrNoIOMMUGroup: the function has no IOMMU group (IOMMU off).
	ErrNoIOMMUGroup = errors.New("vfio: device has no IOMMU group")
	// ErrNotBound: the function is not bound to vfio-pci.
	ErrNotBound = errors.New("vfio: device is not bound to vfio-pci")
	// ErrGroupNotViable: another device of the IOMMU group has a kernel driver.
	ErrGroupNotViable = errors.New("vfio: IOMMU group is not viable")
	// ErrBusy: the group or device is held by another process.
	ErrBusy = errors.New("vfio: in use by another process")
	// ErrDMAWithoutIOMMU: MapDMA on a no-IOMMU container.
	ErrDMAWithoutIOMMU = errors.New("vfio: no DMA mapping in no-IOMMU mode")
	// ErrInvalidAddress: a malformed PCI address.
	ErrInvalidAddress = errors.New("vfio: invalid PCI address")
)

// openError explains a failed open(2) of a VFIO character device. what names
// the file for the reader ("IOMMU group 12", "the VFIO container").
func openError(what, path string, err error) error {
	switch {
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM):
		return fmt.Errorf("open %s (%s): %w: run as root, or give the user access to %s (chown or a udev rule) and raise its locked-memory limit (ulimit -l) for DMA mapping", what, path, err, path)
	case errors.Is(err, unix.EBUSY):
		return fmt.Errorf("%w: open %s (%s): %w: only one process may hold an IOMMU group; find it with `fuser %s` and stop it", ErrBusy, what, path, err, path)
	}
	return fmt.Errorf("open %s (%s): %w", what, path, err)
}
