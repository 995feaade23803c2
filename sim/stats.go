package sim

import "sync/atomic"

// statID names one hardware statistics counter. The engines count into the
// ones named here; the rest exist so that reading them behaves like silicon
// (clear on read, zero unless something counts them).
type statID uint16

const (
	stCRCERRS statID = iota
	stRLEC
	stRUC
	stROC
	stGPRC
	stBPRC
	stMPRC
	stGPTC
	stMPTC
	stBPTC
	stTPR
	stTPT
	stGORC
	stGOTC
	stTOR
	stXEC
	stRXDGPC
	stRXDGBC
	stTXDGPC
	stTXDGBC
	stPRC64  // 6 size buckets: 64, 127, 255, 511, 1023, 1522
	stPTC64  = stPRC64 + 6
	stMPC0   = stPTC64 + 6 // 8 packet buffers
	stRNBC0  = stMPC0 + 8  // 8 packet buffers
	stQPRC0  = stRNBC0 + 8 // 16 queue statistics sets
	stQPRDC0 = stQPRC0 + 16
	stQBRC0  = stQPRDC0 + 16
	stQPTC0  = stQBRC0 + 16
	stQBTC0  = stQPTC0 + 16
	// The virtualization counters (pool.go, veb.go).
	stSSVPC      = stQBTC0 + 16 // switch security violations (anti-spoofing drops)
	stRXDDGPC    = stSSVPC + 1  // receive DMA: replicated copies beyond the first
	stRXDDGBC    = stSSVPC + 2
	stRXLPBKGPC  = stSSVPC + 3 // receive DMA: copies switched from a local pool
	stRXLPBKGBC  = stSSVPC + 4
	stRXDLPBKGPC = stSSVPC + 5 // the switched copies beyond the first
	stRXDLPBKGBC = stSSVPC + 6
	stOther      = stSSVPC + 7 // counters nothing in the model increments start here
)

// numStats bounds the counter array; defineStats panics if it is too small.
const numStats = stOther + 96

func defineStats(m *regMap) {
	m.stat(0x04000, stCRCERRS)
	m.stat(0x04040, stRLEC)
	m.stat(0x040A4, stRUC)
	m.stat(0x040AC, stROC)
	m.stat(0x04074, stGPRC)
	m.stat(0x04078, stBPRC)
	m.stat(0x0407C, stMPRC)
	m.stat(0x04080, stGPTC)
	m.stat(0x040F0, stMPTC)
	m.stat(0x040F4, stBPTC)
	m.stat(0x040D0, stTPR)
	m.stat(0x040D4, stTPT)
	m.stat36(0x04088, 0x0408C, stGORC)
	m.stat36(0x04090, 0x04094, stGOTC)
	m.stat36(0x040C0, 0x040C4, stTOR)
	m.stat(0x04120, stXEC)
	m.stat(0x02F50, stRXDGPC)
	m.stat36(0x02F54, 0x02F58, stRXDGBC)
	m.stat(0x087A0, stTXDGPC)
	m.stat36(0x087A4, 0x087A8, stTXDGBC)
	m.stats(0x0405C, 6, 4, stPRC64)
	m.stats(0x040D8, 6, 4, stPTC64)
	m.stats(0x03FA0, 8, 4, stMPC0)
	m.stats(0x03FC0, 8, 4, stRNBC0)
	m.stats(0x01030, 16, 0x40, stQPRC0)
	m.stats(0x01430, 16, 0x40, stQPRDC0)
	for i := 0; i < 16; i++ {
		m.stat36(0x01034+0x40*uint32(i), 0x01038+0x40*uint32(i), stQBRC0+statID(i))
		m.stat36(0x08700+8*uint32(i), 0x08704+8*uint32(i), stQBTC0+statID(i))
	}
	m.stats(0x08680, 16, 4, stQPTC0)
	m.stat(0x08780, stSSVPC)
	m.stat(0x02F5C, stRXDDGPC)
	m.stat36(0x02F60, 0x02F64, stRXDDGBC)
	m.stat(0x02F68, stRXLPBKGPC)
	m.stat36(0x02F6C, 0x02F70, stRXLPBKGBC)
	m.stat(0x02F74, stRXDLPBKGPC)
	m.stat36(0x02F78, 0x02F7C, stRXDLPBKGBC)

	// Counters for traffic the model does not generate (errors it cannot
	// see, pause frames, management, FCoE, flow director).
	id := stOther
	next := func() statID { id++; return id - 1 }
	for _, off := range []uint32{
		0x04004, 0x04008, 0x04010, 0x04034, 0x04038, // ILLERRC ERRBC MSPDC MLFC MRFC
		0x03F60, 0x03F68, 0x041A4, 0x041A8, // LXON/LXOFF TX/RX
		0x040A8, 0x040B0, 0x040B4, 0x040B8, 0x0CF90, 0x041B0, // RFC RJC MNGPRC MNGPDC MNGPTC RXNFGPC
		0x05118, 0x0241C, 0x02424, 0x02428, 0x0242C, 0x08784, 0x08788, // FCoE
		0x0EE58, 0x0EE5C, // FDIRMATCH FDIRMISS
	} {
		m.stat(off, next())
	}
	for _, base := range []uint32{0x03F00, 0x03F20, 0x04140, 0x04160, 0x03240} { // PXON/PXOFF
		for i := uint32(0); i < 8; i++ {
			m.stat(base+4*i, next())
		}
	}
	for _, lo := range []uint32{0x041B4} { // RXNFGBC
		m.stat36(lo, lo+4, next())
	}
	if id > numStats {
		panic("sim: numStats too small")
	}
}

// counters holds the live statistics. The engines add with atomics; a read
// of the register swaps the counter to zero, which is clear-on-read.
type counters struct {
	v [numStats]atomic.Uint64
	// hi holds bits 35:32 latched by the read of a 36-bit counter's low
	// register, returned (and cleared) by the read of its high register.
	// Drivers read L then H (Intel shared code, ixy); latching on L keeps
	// every count, whichever order a driver uses.
	hi [numStats]atomic.Uint32
}

func (c *counters) add(id statID, n uint64) { c.v[id].Add(n) }

func (c *counters) read32(id statID) uint32 {
	v := c.v[id].Swap(0)
	if v > 0xFFFFFFFF {
		return 0xFFFFFFFF // 32-bit counters stick at their maximum
	}
	return uint32(v)
}

func (c *counters) readLo(id statID) uint32 {
	v := c.v[id].Swap(0)
	c.hi[id].Store(uint32(v>>32) & 0xF)
	return uint32(v)
}

func (c *counters) readHi(id statID) uint32 { return c.hi[id].Swap(0) }

func (c *counters) reset() {
	for i := range c.v {
		c.v[i].Store(0)
		c.hi[i].Store(0)
	}
}

// sizeBucket maps a frame length (with CRC) to the PRC/PTC bucket index.
func sizeBucket(n int) statID {
	switch {
	case n <= 64:
		return 0
	case n <= 127:
		return 1
	case n <= 255:
		return 2
	case n <= 511:
		return 3
	case n <= 1023:
		return 4
	}
	return 5
}
