package hugepage

import "github.com/zcnet/zcnet/internal/memword"

// addressOf returns the virtual address of b's first byte, or 0 for an
// empty slice. Every slice passed here views an mmapped region outside the
// Go heap, so the address stays valid until the Region is closed; it is
// used as a number only (IOMMU and vhost address translation, alignment
// checks).
func addressOf(b []byte) uintptr { return memword.Addr(b) }
