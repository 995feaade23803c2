//go:build mips || mipsle || mips64 || mips64le || ppc || ppc64 || ppc64le || sparc || sparc64

package vfio

// On these architectures _IOC_NONE is 1 and the direction field is three
// bits starting at bit 29 (arch/*/include/uapi/asm/ioctl.h), so even _IO
// requests carry a direction bit.
const (
	iocNone     = 1
	iocDirShift = 29
)
