package vfio

// store32 is a single 32-bit MOV to *addr, written in assembly
// (mmio_amd64.s). atomic.StoreUint32 would be an XCHG, a locked
// read-modify-write: on a device register that is a read the device sees
// (clearing read-to-clear bits such as an interrupt cause register) and a
// locked transaction PCIe endpoints are not required to support. A plain
// MOV is what Linux's writel() is on x86: x86 keeps stores in program order,
// also relative to the uncached BAR mapping, so descriptors written to DMA
// memory before a tail-register store reach memory first. Being an opaque
// call, it is also a compiler barrier: the compiler can neither drop it nor
// move other memory accesses across it.
//
//go:noescape
func store32(addr *uint32, v uint32)
