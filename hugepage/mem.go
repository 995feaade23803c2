package hugepage

// This file holds the package's only use of unsafe.

import "unsafe"

// addressOf returns the virtual address of b's first byte, or 0 for an empty
// slice.
//
// Sound because every slice passed here views an mmap'd region outside the Go
// heap: the garbage collector neither moves nor frees it, so the address stays
// valid until the Region is closed. The result is only ever used as a number
// (for IOMMU and vhost address translation, and for alignment checks); it is
// never converted back into a pointer.
func addressOf(b []byte) uintptr {
	if len(b) == 0 {
		return 0
	}
	return uintptr(unsafe.Pointer(unsafe.SliceData(b)))
}
