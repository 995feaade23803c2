// Package memword is zcnet's one audited place for reading and writing
// words of memory another agent shares: virtqueue rings in guest memory
// (the guest's driver writes them), descriptor rings and write-back words
// in DMA memory (the NIC writes them), and the address of a byte slice as
// a number (for IOMMU and guest address translation).
//
// Why unsafe is needed and sound here:
//   - sync/atomic works on typed pointers only, so a byte slice must be
//     reinterpreted as *uint32 or *uint16. Every accessor bounds-checks by
//     slicing before it takes the address, so it never reaches outside b.
//   - The memory is mmapped (guest memory, hugepages, the simulator's
//     DMA-mapped buffers), never Go heap memory: the garbage collector
//     neither scans nor moves it, and callers keep the mapping for as long
//     as they access it (each package's comments say how).
//   - 32-bit atomics need 4-byte alignment: callers use them only at
//     offsets their layout keeps aligned, or check with Aligned4 first.
//   - A 16-bit field is loaded or stored in one 16-bit access (a Go *uint16
//     dereference compiles to one MOVW/LDRH), single-copy atomic for an
//     aligned halfword on every supported CPU; its ordering comes from the
//     sync/atomic operations around it, which are compiler barriers and
//     hardware fences where needed.
//   - Addresses are returned as numbers and never turned back into
//     pointers.
//
// Words are in host order, which on every supported CPU (amd64, arm64) is
// the little-endian order virtio 1.x and the 82599 define; init refuses a
// big-endian host.
package memword

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

func init() {
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		panic("memword: big-endian hosts are not supported")
	}
}

// Addr is the virtual address of b's first byte, or 0 for an empty slice.
func Addr(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}

// Aligned4 reports whether b[off] is 4-byte aligned in memory.
func Aligned4(b []byte, off int) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b[off:])))&3 == 0
}

// Load32 atomically loads the 32-bit word at b[off] (4-byte aligned).
func Load32(b []byte, off int) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off : off+4][0])))
}

// Store32 atomically stores v at b[off] (4-byte aligned) with release
// semantics: every earlier store is visible before it.
func Store32(b []byte, off int, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[off : off+4][0])), v)
}

// Load16 loads the 16-bit word at b[off] (2-byte aligned) in one access.
func Load16(b []byte, off int) uint16 {
	return *(*uint16)(unsafe.Pointer(&b[off : off+2][0]))
}

// Store16 stores v at b[off] (2-byte aligned) in one access.
func Store16(b []byte, off int, v uint16) {
	*(*uint16)(unsafe.Pointer(&b[off : off+2][0])) = v
}

// Or32 atomically ORs v into the 32-bit word at b[off] (4-byte aligned):
// bits another agent sets in the same word at the same time are kept.
// It is the dirty log's update (one bit per guest page, the front end
// clearing bits as it reads them).
func Or32(b []byte, off int, v uint32) {
	atomic.OrUint32((*uint32)(unsafe.Pointer(&b[off : off+4][0])), v)
}
