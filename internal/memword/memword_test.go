package memword

import (
	"encoding/binary"
	"testing"
)

// The accessors read and write the little-endian words the ring formats
// define, at the offsets given, and nothing around them.
func TestWordsAreLittleEndianAndInPlace(t *testing.T) {
	b := make([]byte, 16)
	Store32(b, 4, 0x11223344)
	Store16(b, 10, 0xaabb)
	if got := binary.LittleEndian.Uint32(b[4:]); got != 0x11223344 || Load32(b, 4) != 0x11223344 {
		t.Fatalf("32-bit word at 4: %#x, bytes % x", got, b)
	}
	if got := binary.LittleEndian.Uint16(b[10:]); got != 0xaabb || Load16(b, 10) != 0xaabb {
		t.Fatalf("16-bit word at 10: %#x, bytes % x", got, b)
	}
	for i, v := range b {
		if (i < 4 || (i >= 8 && i < 10) || i >= 12) && v != 0 {
			t.Fatalf("byte %d changed: % x", i, b)
		}
	}
	if Addr(nil) != 0 || Addr(b) == 0 || Addr(b[3:]) != Addr(b)+3 {
		t.Fatal("Addr")
	}
	if Aligned4(b, 1) == Aligned4(b, 0) {
		t.Fatal("Aligned4 cannot tell offsets 0 and 1 apart")
	}
}

// An access past the end of b panics (a bounds check), never reads or
// writes outside it.
func TestAccessesAreBoundsChecked(t *testing.T) {
	b := make([]byte, 8)
	for name, f := range map[string]func(){
		"Load32":  func() { Load32(b, 6) },
		"Store32": func() { Store32(b, 5, 1) },
		"Load16":  func() { Load16(b, 7) },
		"Store16": func() { Store16(b, 7, 1) },
	} {
		func() {
			defer func() {
				if recover() == nil {
					t.Errorf("%s past the end did not panic", name)
				}
			}()
			f()
		}()
	}
}

// Or32 sets bits without clearing others, in place.
func TestOr32(t *testing.T) {
	b := make([]byte, 12)
	Store32(b, 4, 0x0100_0001)
	Or32(b, 4, 0x8000_0010)
	if got := Load32(b, 4); got != 0x8100_0011 {
		t.Fatalf("word: %#x", got)
	}
	for i, v := range b {
		if (i < 4 || i >= 8) && v != 0 {
			t.Fatalf("byte %d changed: % x", i, b)
		}
	}
}
