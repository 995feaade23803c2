package vfio

import (
	"encoding/binary"
	"errors"
	"fmt"

	"golang.org/x/sys/unix"
)

// IRQs returns the device's interrupt control.
func (d *PCIDevice) IRQs() IRQs { return pciIRQs{d} }

// pciIRQs routes interrupts to eventfds with VFIO_DEVICE_SET_IRQS.
type pciIRQs struct{ d *PCIDevice }

// Count reports how many vectors of kind the function offers (0 if none).
func (q pciIRQs) Count(kind IRQKind) (int, error) {
	info, err := q.d.IRQInfo(kind)
	if err != nil {
		return 0, err
	}
	return info.Count, nil
}

// Enable makes vector i of kind signal eventfd fds[i] (a negative fd leaves
// that vector unassigned). vfio-pci runs one kind at a time among INTx, MSI
// and MSI-X, so another enabled kind must be disabled first. Enabling the
// enabled kind again replaces its vectors.
func (q pciIRQs) Enable(kind IRQKind, fds []int) error {
	d := q.d
	info, err := d.IRQInfo(kind)
	if err != nil {
		return err
	}
	if info.Count == 0 {
		return fmt.Errorf("%w: %s has no %v interrupt", ErrNotSupported, d.addr, kind)
	}
	if len(fds) == 0 || len(fds) > info.Count {
		return fmt.Errorf("enable %v on %s: %d eventfds given, the function has %d vectors (use Disable to tear them down)", kind, d.addr, len(fds), info.Count)
	}
	data := make([]int32, len(fds))
	for i, fd := range fds {
		data[i] = int32(fd)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.irqOn && exclusiveIRQ(kind) && exclusiveIRQ(d.irqKind) {
		if d.irqKind != kind {
			return fmt.Errorf("enable %v on %s: %v is enabled; disable it first (vfio-pci runs one of INTx, MSI, MSI-X at a time)", kind, d.addr, d.irqKind)
		}
		// The kernel can retarget the vectors it enabled but not grow
		// them; start from scratch so any vector count works.
		if err := d.setIRQs(irqSetDataNone|irqSetActionTrigger, kind, 0, nil); err != nil {
			return err
		}
		d.irqOn = false
	}
	if err := d.setIRQs(irqSetDataEventfd|irqSetActionTrigger, kind, uint32(len(data)), data); err != nil {
		return err
	}
	if exclusiveIRQ(kind) {
		d.irqOn, d.irqKind = true, kind
	}
	return nil
}

// Disable tears down all vectors of kind. Disabling a kind that is not
// enabled does nothing.
func (q pciIRQs) Disable(kind IRQKind) error {
	d := q.d
	if _, err := d.IRQInfo(kind); err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if exclusiveIRQ(kind) && !(d.irqOn && d.irqKind == kind) {
		return nil
	}
	// DATA_NONE with count 0 is the kernel's "disable this index".
	if err := d.setIRQs(irqSetDataNone|irqSetActionTrigger, kind, 0, nil); err != nil {
		return err
	}
	if exclusiveIRQ(kind) {
		d.irqOn = false
	}
	return nil
}

// UnmaskINTx re-arms the level-triggered INTx line, which VFIO masks each
// time it fires (IRQInfo.Automasked), after the driver has served the device.
func (d *PCIDevice) UnmaskINTx() error {
	return d.setIRQs(irqSetDataNone|irqSetActionUnmask, IRQINTx, 1, nil)
}

// exclusiveIRQ reports the kinds vfio-pci allows only one of at a time; the
// ERR and REQ indexes are independent of them.
func exclusiveIRQ(k IRQKind) bool { return k == IRQINTx || k == IRQMSI || k == IRQMSIX }

func (d *PCIDevice) setIRQs(flags uint32, kind IRQKind, count uint32, fds []int32) error {
	buf := encodeIRQSet(flags, uint32(kind), 0, count, fds)
	if _, err := ioctlPtr(d.file, reqDeviceSetIRQs, &buf[0]); err != nil {
		what := fmt.Sprintf("VFIO_DEVICE_SET_IRQS %v (flags %#x, %d vectors) on %s", kind, flags, count, d.addr)
		switch {
		case errors.Is(err, unix.EINVAL):
			return fmt.Errorf("%s: %w: the kernel refused the request (another interrupt kind enabled, or more vectors than the function has)", what, err)
		case errors.Is(err, unix.EBADF):
			return fmt.Errorf("%s: %w: a descriptor passed is not an eventfd (create them with unix.Eventfd)", what, err)
		case errors.Is(err, unix.ENODEV):
			return fmt.Errorf("%s: %w: the function has no interrupt line assigned", what, err)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	return nil
}

// encodeIRQSet lays out struct vfio_irq_set followed by its data: one int32
// eventfd per vector when fds is given, nothing for DATA_NONE. argsz covers
// header and data.
func encodeIRQSet(flags, index, start, count uint32, fds []int32) []byte {
	buf := make([]byte, irqSetHeaderSize+4*len(fds))
	ne := binary.NativeEndian
	ne.PutUint32(buf[0:], uint32(len(buf)))
	ne.PutUint32(buf[4:], flags)
	ne.PutUint32(buf[8:], index)
	ne.PutUint32(buf[12:], start)
	ne.PutUint32(buf[16:], count)
	for i, fd := range fds {
		ne.PutUint32(buf[irqSetHeaderSize+4*i:], uint32(fd))
	}
	return buf
}
