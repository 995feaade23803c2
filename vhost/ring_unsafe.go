package vhost

// This file holds the package's only uses of unsafe: single-copy-atomic,
// ordered access to the words of a virtqueue that the front end's driver
// and this back end share in guest memory (mmapped, never Go heap memory).
//
// Why unsafe is needed and sound here:
//   - The ring words are written concurrently by another agent (the guest's
//     driver). sync/atomic only operates on Go typed pointers, so the byte
//     slice the memory table gives us must be reinterpreted as *uint32 or
//     *uint16. Every accessor bounds-checks through slicing before taking
//     the address, so it never reaches outside the mapping.
//   - The memory is not managed by the Go garbage collector (it comes from
//     mmap), so pointers into it never confuse the collector, and the
//     mapping outlives every access: the Device unmaps a memory table only
//     while holding the data-path lock that pollers hold around ring access.
//   - 32-bit atomics need 4-byte alignment; callers use them only on
//     addresses checked with aligned4 (used ring: the spec requires 4-byte
//     alignment; avail ring: we check and fall back to load16+fence).
//   - 16-bit fields are loaded and stored with one 16-bit access (a Go
//     *uint16 dereference compiles to a single MOVW/LDRH), which is
//     single-copy atomic for an aligned halfword on every supported CPU.
//     Ordering for them comes from the surrounding sync/atomic operations,
//     which are full compiler barriers and hardware fences where needed.

import (
	"encoding/binary"
	"sync/atomic"
	"unsafe"
)

func init() {
	// The ring accessors below assume that host order is virtio 1.x's
	// little-endian order.
	if binary.NativeEndian.Uint16([]byte{1, 0}) != 1 {
		panic("vhost: big-endian hosts are not supported")
	}
}

// aligned4 reports whether b[off] is 4-byte aligned in memory.
func aligned4(b []byte, off int) bool {
	return uintptr(unsafe.Pointer(unsafe.SliceData(b[off:])))&3 == 0
}

// load32 atomically loads the little-endian u32 at b[off] (4-byte aligned).
func load32(b []byte, off int) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Pointer(&b[off : off+4][0])))
}

// store32 atomically stores v at b[off] (4-byte aligned) with release
// semantics: every earlier store is visible before it.
func store32(b []byte, off int, v uint32) {
	atomic.StoreUint32((*uint32)(unsafe.Pointer(&b[off : off+4][0])), v)
}

// load16 loads the u16 at b[off] (2-byte aligned) in a single access.
func load16(b []byte, off int) uint16 {
	return *(*uint16)(unsafe.Pointer(&b[off : off+2][0]))
}

// store16 stores the u16 at b[off] (2-byte aligned) in a single access.
func store16(b []byte, off int, v uint16) {
	*(*uint16)(unsafe.Pointer(&b[off : off+2][0])) = v
}

// fullFence orders every earlier load and store before every later one
// (a locked read-modify-write on amd64, an acquire-release RMW on arm64).
// w is a word private to the caller, so the fence costs no cache-line
// bouncing.
func fullFence(w *uint32) { atomic.AddUint32(w, 0) }

// hostAddr is the virtual address of b's first byte (b not empty), used as
// a number only: to tell whether a faulting address lies in guest memory.
func hostAddr(b []byte) uintptr { return uintptr(unsafe.Pointer(unsafe.SliceData(b))) }
