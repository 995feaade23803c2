package engine

import "github.com/zcnet/zcnet/internal/memword"

// addrOf is the virtual address of b's first byte. Guest memory is mmapped
// by the vhost back end and never moves while its memory table is
// installed, so the address of a slice into it is a stable key for finding
// the region (and thus the IOVA) the slice lies in. The result is used as a
// number only, never turned back into a pointer. b must not be empty.
func addrOf(b []byte) uintptr { return memword.Addr(b) }
