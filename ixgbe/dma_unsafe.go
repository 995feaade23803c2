package ixgbe

// This file holds the package's only use of unsafe: access to descriptor
// rings and the TX head write-back word, which live in DMA memory the device
// reads and writes concurrently with the CPU.
//
// Why it is sound:
//   - The memory is an mmap'd hugepage region (hugepage.Region), outside the
//     Go heap. The garbage collector neither scans nor moves it, so keeping
//     an unsafe.Pointer to it across calls is safe; the region outlives the
//     queue (Port.Close stops the queues before it closes the region).
//   - Every access is to an index masked by the ring size, so it stays
//     inside the ring the pointer was made from (checked once, in
//     newDescRing).
//   - Descriptors are 16-byte aligned (rings are 128-byte aligned), so every
//     32- and 64-bit access is naturally aligned, which makes it a single,
//     untorn bus access and lets sync/atomic be used on it.
//
// Ordering: the device writes a descriptor back and sets DD; software must
// see DD before the rest of the write-back, so the status qword is read with
// an atomic load first and the other words after it. Descriptors software
// fills are published to the device by the tail register write, which the
// vfio.BAR contract orders after all earlier stores to DMA memory; the
// stores themselves therefore need no barrier and are plain stores (an
// atomic store on amd64 is a locked XCHG, several times the cost of the
// whole per-packet budget).

import (
	"fmt"
	"sync/atomic"
	"unsafe"
)

// descRing is a ring of 16-byte descriptors in DMA memory.
type descRing struct {
	base unsafe.Pointer
	mask uint32
}

// newDescRing views mem as a ring of n descriptors. n must be a power of
// two and mem 16-byte aligned and at least n*16 bytes long.
func newDescRing(mem []byte, n int) (descRing, error) {
	if n <= 0 || n&(n-1) != 0 {
		return descRing{}, fmt.Errorf("ixgbe: descriptor ring of %d entries is not a power of two", n)
	}
	if len(mem) < n*descSize {
		return descRing{}, fmt.Errorf("ixgbe: %d bytes of ring memory hold fewer than %d descriptors", len(mem), n)
	}
	p := unsafe.Pointer(unsafe.SliceData(mem))
	if uintptr(p)%descSize != 0 {
		return descRing{}, fmt.Errorf("ixgbe: ring memory at %#x is not 16-byte aligned", uintptr(p))
	}
	return descRing{base: p, mask: uint32(n - 1)}, nil
}

func (r descRing) qword(slot uint32, q uintptr) *uint64 {
	return (*uint64)(unsafe.Add(r.base, uintptr(slot&r.mask)*descSize+q*8))
}

// load1 atomically reads qword 1 of a descriptor (where the status lives).
func (r descRing) load1(slot uint32) uint64 { return atomic.LoadUint64(r.qword(slot, 1)) }

// loadHi1 atomically reads the upper dword of qword 1 (TX olinfo_status,
// where the device writes DD back).
func (r descRing) loadHi1(slot uint32) uint32 {
	return atomic.LoadUint32((*uint32)(unsafe.Add(r.base, uintptr(slot&r.mask)*descSize+12)))
}

// store writes a whole descriptor with plain stores; see the file comment
// for why the tail write, not the store, is the publication point.
func (r descRing) store(slot uint32, q0, q1 uint64) {
	*r.qword(slot, 0) = q0
	*r.qword(slot, 1) = q1
}

// dmaWord is a 32-bit word in DMA memory the device writes (the TX head
// write-back).
type dmaWord struct{ p *uint32 }

// newDMAWord views the first four bytes of mem, which must be 4-byte
// aligned.
func newDMAWord(mem []byte) dmaWord {
	if len(mem) < 4 || uintptr(unsafe.Pointer(unsafe.SliceData(mem)))%4 != 0 {
		panic("ixgbe: head write-back word is not a 4-byte aligned word")
	}
	return dmaWord{(*uint32)(unsafe.Pointer(unsafe.SliceData(mem)))}
}

func (w dmaWord) load() uint32   { return atomic.LoadUint32(w.p) }
func (w dmaWord) store(v uint32) { atomic.StoreUint32(w.p, v) }
