package sim

import "github.com/zcnet/zcnet/internal/memword"

// Descriptor status words are the handshake between the device and the
// driver: the driver polls them with atomic loads while the device writes
// them, so the device publishes them with atomic stores (internal/memword),
// after the rest of the descriptor and the packet data. b always comes from
// IOMMU.slice/lookup: memory the caller mapped (never the Go heap, as
// vfio.DMAMapper requires), at least 4 bytes long, at a 4-byte aligned
// offset (descriptor rings are 128-byte aligned, status words sit at
// offsets 8 and 12 of 16-byte descriptors, and the head write-back address
// has bits 1:0 ignored), and the IOMMU read lock is held meanwhile.

// atomicStoreLE32 publishes v into the 4 bytes at b[0:4].
func atomicStoreLE32(b []byte, v uint32) { memword.Store32(b, 0, v) }

// atomicLoadLE32 reads the 4 bytes at b[0:4] as one word.
func atomicLoadLE32(b []byte) uint32 { return memword.Load32(b, 0) }

// addressOf is the virtual address of b's first byte, used only to check
// the page alignment MapDMA requires.
func addressOf(b []byte) uintptr { return memword.Addr(b) }
