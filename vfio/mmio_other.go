//go:build !amd64

package vfio

import "sync/atomic"

// store32 stores v to *addr with one 32-bit store-release (STLR on arm64),
// which orders it after every earlier store, including descriptor writes to
// DMA memory, and cannot be dropped or merged by the compiler.
func store32(addr *uint32, v uint32) {
	atomic.StoreUint32(addr, v)
}
