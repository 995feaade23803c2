package vfio

// Every use of package unsafe in package vfio is in this file. There are
// three kinds, each explained where it happens:
//
//   - ioctl arguments: a pointer to a Go value handed to the kernel for the
//     duration of one system call;
//   - register access: 32-bit loads and stores on a BAR mapped with mmap;
//   - the user virtual address of DMA memory handed to VFIO_IOMMU_MAP_DMA.

import (
	"fmt"
	"os"
	"runtime"
	"sync/atomic"
	"unsafe"

	"golang.org/x/sys/unix"
)

// ioctlArg issues req on f with arg passed by value (an integer the kernel
// reads from the register, as VFIO_CHECK_EXTENSION and VFIO_SET_IOMMU do).
// It returns the ioctl's non-negative result.
func ioctlArg(f *os.File, req, arg uintptr) (int, error) {
	return ioctl(f, req, arg, nil)
}

// ioctlPtr issues req on f with a pointer to *p, which the kernel reads
// and/or fills in during the call.
func ioctlPtr[T any](f *os.File, req uintptr, p *T) (int, error) {
	// Sound: unsafe.Pointer(p) keeps *p reachable, and Go's collector does
	// not move heap objects. A value on the goroutine stack could move only
	// if the stack were copied, which cannot happen while this goroutine is
	// inside the system call; the uintptr the kernel sees is produced in the
	// Syscall argument list (rule 4 of unsafe.Pointer). The kernel uses the
	// pointer only until the ioctl returns; KeepAlive pins *p until then.
	n, err := ioctl(f, req, 0, unsafe.Pointer(p))
	runtime.KeepAlive(p)
	return n, err
}

// ioctlString issues req with a pointer to a NUL-terminated copy of s, as
// VFIO_GROUP_GET_DEVICE_FD takes the device name.
func ioctlString(f *os.File, req uintptr, s string) (int, error) {
	b, err := unix.BytePtrFromString(s)
	if err != nil {
		return -1, err
	}
	return ioctlPtr(f, req, b)
}

// ioctl runs the system call on f's descriptor through SyscallConn, so that a
// concurrent Close cannot hand the number to another file in the middle.
// Exactly one of arg and p is used.
func ioctl(f *os.File, req, arg uintptr, p unsafe.Pointer) (int, error) {
	rc, err := f.SyscallConn()
	if err != nil {
		return -1, err
	}
	var r uintptr
	var errno unix.Errno
	cerr := rc.Control(func(fd uintptr) {
		if p != nil {
			// Sound: see ioctlPtr; the conversion happens in the call.
			r, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, uintptr(p))
		} else {
			r, _, errno = unix.Syscall(unix.SYS_IOCTL, fd, req, arg)
		}
	})
	if cerr != nil {
		return -1, cerr
	}
	if errno != 0 {
		return -1, errno
	}
	return int(r), nil
}

// bytesAddress returns the user virtual address of b's first byte, as
// VFIO_IOMMU_MAP_DMA wants it in vaddr.
func bytesAddress(b []byte) uint64 {
	// Sound: only the numeric address is taken, nothing is dereferenced. That
	// the memory stays put while the IOMMU maps it is the caller's contract
	// (DMAMapper.MapDMA): it must come from mmap (hugepages, memfd), which
	// the Go collector neither moves nor frees.
	return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b))))
}

// reg32 returns a pointer to the 32-bit register at off in a mapped BAR, or
// panics if off is outside mem or not 4-byte aligned. A driver computing a
// wrong register offset has a bug no caller can handle; reading past the
// mapping would fault the whole process with a less useful message.
func reg32(mem []byte, off uint32) *uint32 {
	if off%4 != 0 || uint64(off)+4 > uint64(len(mem)) {
		panic(fmt.Sprintf("vfio: 32-bit register access at %#x outside the %#x-byte BAR or unaligned", off, len(mem)))
	}
	// Sound: mem is a MAP_SHARED mapping of the BAR made by mmap and
	// unmapped only by PCIDevice.Close; off+4 <= len(mem) and off is 4-byte
	// aligned (mmap returns a page-aligned base), so the *uint32 points at
	// one whole, naturally aligned register inside the mapping.
	return (*uint32)(unsafe.Pointer(&mem[off]))
}

// mmioRead32 loads the register with a single 32-bit load. An atomic load is
// one untorn MOV on amd64 (LDAR on arm64) that the compiler can neither drop,
// repeat nor merge, which matters for registers that clear on read.
func mmioRead32(mem []byte, off uint32) uint32 {
	return atomic.LoadUint32(reg32(mem, off))
}

// mmioWrite32 stores v to the register with a single 32-bit store (see
// store32 for why this is not atomic.StoreUint32 on amd64).
func mmioWrite32(mem []byte, off, v uint32) {
	store32(reg32(mem, off), v)
}
