package wire

import (
	"encoding/binary"
	"time"
)

// A probe is the header the Generator puts at the start of every UDP
// payload and the Sink looks for. It fits a minimum-size frame: 60 bytes
// without FCS minus 42 bytes of Ethernet, IPv4 and UDP headers leaves 18.
//
//	offset 0  magic      4 bytes, ProbeMagic
//	offset 4  sequence   6 bytes, big endian, per generator, from 0
//	offset 10 timestamp  8 bytes, big endian, Monotonic() at transmit, ns
//
// 48 bits of sequence number last 218 days at 14.88 Mpps (10GbE line rate
// for 64-byte frames), so the sequence never wraps in practice.
const (
	ProbeLen   = 18
	ProbeMagic = 0x7a636e77 // "zcnw"

	probeSeqMask = 1<<48 - 1
)

func putProbe(b []byte, seq uint64, stamp int64) {
	binary.BigEndian.PutUint32(b[0:], ProbeMagic)
	binary.BigEndian.PutUint16(b[4:], uint16(seq>>32))
	binary.BigEndian.PutUint32(b[6:], uint32(seq))
	binary.BigEndian.PutUint64(b[10:], uint64(stamp))
}

// parseProbe reads a probe header from a UDP payload.
func parseProbe(payload []byte) (seq uint64, stamp int64, ok bool) {
	if len(payload) < ProbeLen || binary.BigEndian.Uint32(payload) != ProbeMagic {
		return 0, 0, false
	}
	seq = uint64(binary.BigEndian.Uint16(payload[4:]))<<32 | uint64(binary.BigEndian.Uint32(payload[6:]))
	return seq, int64(binary.BigEndian.Uint64(payload[10:])), true
}

// processStart anchors Monotonic. time.Since reads the monotonic clock
// reading that time.Now carries, so wall-clock steps do not disturb it.
var processStart = time.Now()

// Monotonic is the clock probes are stamped with: nanoseconds since an
// arbitrary point early in this process. Stamps are comparable only within
// one process, which is where generator, simulated NIC and sink live.
func Monotonic() int64 { return int64(time.Since(processStart)) }
