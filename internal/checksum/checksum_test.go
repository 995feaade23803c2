package checksum

import (
	"math/rand/v2"
	"testing"
)

// referenceChecksum is RFC 1071's algorithm written the slow, obvious way:
// 16-bit big-endian words, end-around carry, complement.
func referenceChecksum(b []byte) uint16 {
	var sum uint32
	for i := 0; i+1 < len(b); i += 2 {
		sum += uint32(b[i])<<8 | uint32(b[i+1])
	}
	if len(b)%2 == 1 {
		sum += uint32(b[len(b)-1]) << 8
	}
	for sum > 0xffff {
		sum = sum>>16 + sum&0xffff
	}
	return ^uint16(sum)
}

func TestRFC1071Example(t *testing.T) {
	// RFC 1071 section 3: these bytes sum to ddf2, so the checksum is 220d.
	b := []byte{0x00, 0x01, 0xf2, 0x03, 0xf4, 0xf5, 0xf6, 0xf7}
	if got := Fold(Add(0, b)); got != 0xddf2 {
		t.Errorf("sum = %#04x, want 0xddf2", got)
	}
	if got := Finish(Add(0, b)); got != 0x220d {
		t.Errorf("checksum = %#04x, want 0x220d", got)
	}
}

func TestMatchesReference(t *testing.T) {
	rng := rand.New(rand.NewPCG(1, 2))
	buf := make([]byte, 9100)
	for i := range 2000 {
		n := rng.IntN(len(buf))
		if i < 64 {
			n = i // every short length, where the tail handling matters
		}
		b := buf[:n]
		fill := byte(rng.IntN(3))
		for j := range b {
			switch fill {
			case 0:
				b[j] = byte(rng.Uint32())
			case 1:
				b[j] = 0xff // maximal carries
			default:
				b[j] = 0
			}
		}
		if got, want := Finish(Add(0, b)), referenceChecksum(b); got != want {
			t.Fatalf("len %d fill %d: checksum %#04x, reference %#04x", n, fill, got, want)
		}
		// Summing in two pieces split at an even offset gives the same.
		split := rng.IntN(n/2+1) * 2
		if got, want := Finish(Add(Add(0, b[:split]), b[split:])), referenceChecksum(b); got != want {
			t.Fatalf("len %d split %d: checksum %#04x, reference %#04x", n, split, got, want)
		}
		// So does adding the sums of the two pieces with +.
		if got, want := Finish(Add(0, b[:split])+Add(0, b[split:])), referenceChecksum(b); got != want {
			t.Fatalf("len %d split %d, sums added: checksum %#04x, reference %#04x", n, split, got, want)
		}
	}
}

func Benchmark1500(b *testing.B) {
	buf := make([]byte, 1500)
	for i := range buf {
		buf[i] = byte(i * 7)
	}
	b.SetBytes(int64(len(buf)))
	var sink uint16
	for b.Loop() {
		sink += Finish(Add(0, buf))
	}
	_ = sink
}
