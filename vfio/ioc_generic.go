//go:build !(mips || mipsle || mips64 || mips64le || ppc || ppc64 || ppc64le || sparc || sparc64)

package vfio

// asm-generic/ioctl.h: _IOC_NONE is 0 and the direction field starts at bit 30.
const (
	iocNone     = 0
	iocDirShift = 30
)
