package vhost

// Gather copies the bytes of segs, starting skip bytes in, into dst and
// returns how many it copied. Only readable segments should be passed.
func Gather(dst []byte, segs []Segment, skip int) int {
	n := 0
	for i := range segs {
		b := segs[i].Buf // not a copy of the whole Segment: see setSegment
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		b = b[skip:]
		skip = 0
		c := copy(dst[n:], b)
		n += c
		if n == len(dst) {
			break
		}
	}
	return n
}

// Scatter copies src into segs starting off bytes in and returns how many
// bytes it copied (less than len(src) if the segments are too short).
func Scatter(segs []Segment, off int, src []byte) int {
	n := 0
	for i := range segs {
		b := segs[i].Buf // not a copy of the whole Segment: see setSegment
		if off >= len(b) {
			off -= len(b)
			continue
		}
		b = b[off:]
		off = 0
		c := copy(b, src[n:])
		n += c
		if n == len(src) {
			break
		}
	}
	return n
}

// writable returns the writable tail of a chain's segments (readable
// segments always come first).
func writable(segs []Segment) []Segment {
	for i := range segs {
		if segs[i].Writable {
			return segs[i:]
		}
	}
	return nil
}
