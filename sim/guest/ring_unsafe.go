package guest

// The guest's only uses of unsafe, for the same reason as vhost's
// ring_unsafe.go: ring words shared with the back end through mmapped
// memfd memory are accessed with sync/atomic, which needs typed pointers.
// The memory is never Go heap memory, the accessors slice before taking an
// address (bounds-checked), and 32-bit accesses are made only at offsets
// the ring layout keeps 4-byte aligned (rings are allocated 4 KiB aligned).

import (
	"sync/atomic"
	"unsafe"
)

func load32(b []byte, off int) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off : off+4][0])))
}

func store32(b []byte, off int, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[off : off+4][0])), v)
}

func load16(b []byte, off int) uint16 {
	return *(*uint16)(unsafe.Pointer(&b[off : off+2][0]))
}

func store16(b []byte, off int, v uint16) {
	*(*uint16)(unsafe.Pointer(&b[off : off+2][0])) = v
}

// addressOf is the process virtual address of b[0]: the "front-end user
// address" a vhost-user front end reports for its memory.
func addressOf(b []byte) uint64 { return uint64(uintptr(unsafe.Pointer(unsafe.SliceData(b)))) }
