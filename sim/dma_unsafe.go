package sim

import (
	"sync/atomic"
	"unsafe"
)

// This file holds the package's only uses of unsafe.
//
// Descriptor status words are the handshake between the device and the
// driver: the driver polls them with atomic loads while the device writes
// them, so the device must publish them with atomic stores, after the rest
// of the descriptor and the packet data. Go offers atomics only on typed
// words, hence the pointer conversions below. They are sound because:
//   - b always comes from IOMMU.slice/lookup: a sub-slice of memory the
//     caller mapped (mmap or hugepage memory, never the Go heap, as
//     vfio.DMAMapper requires), at least 4 bytes long;
//   - the offset is 4-byte aligned: descriptor rings are 128-byte aligned
//     (the model ignores RDBAL/TDBAL bits 6:0, as silicon does), status
//     words sit at offsets 8 and 12 of 16-byte descriptors, and the head
//     write-back address has bits 1:0 ignored (TDWBAL);
//   - the IOMMU read lock is held, so the memory cannot be unmapped while
//     the word is accessed.
//
// x86-64 and arm64 are little-endian, so the native word is the
// little-endian value the descriptor formats define.

// atomicStoreLE32 publishes v into the 4 bytes at b[0:4].
func atomicStoreLE32(b []byte, v uint32) {
	_ = b[3]
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[0])), v)
}

// atomicLoadLE32 reads the 4 bytes at b[0:4] as one word.
func atomicLoadLE32(b []byte) uint32 {
	_ = b[3]
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[0])))
}

// addressOf is the virtual address of b's first byte, used only to check
// the page alignment MapDMA requires.
func addressOf(b []byte) uintptr { return uintptr(unsafe.Pointer(&b[0])) }
