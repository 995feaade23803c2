package guest

import "github.com/zcnet/zcnet/internal/memword"

// Ring words shared with the back end through mmapped memfd memory go
// through internal/memword, as vhost's do. 32-bit accesses are made only
// at offsets the ring layout keeps 4-byte aligned (rings are allocated
// 4 KiB aligned).

func load32(b []byte, off int) uint32     { return memword.Load32(b, off) }
func store32(b []byte, off int, v uint32) { memword.Store32(b, off, v) }
func load16(b []byte, off int) uint16     { return memword.Load16(b, off) }
func store16(b []byte, off int, v uint16) { memword.Store16(b, off, v) }

// addressOf is the process virtual address of b[0]: the "front-end user
// address" a vhost-user front end reports for its memory.
func addressOf(b []byte) uint64 { return uint64(memword.Addr(b)) }
