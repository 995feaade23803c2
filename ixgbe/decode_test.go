package ixgbe

import (
	"testing"

	"github.com/zcnet/zcnet/ring"
)

// TestDecodeRxEveryStatus decodes a write-back with every combination of
// the status and error bits the driver reports (VP, UDPCS, L4CS, IPCS,
// RXE, L4E, IPE) and checks each result against the datasheet's meaning of
// the bits (7.1.6.2), read here bit by bit.
func TestDecodeRxEveryStatus(t *testing.T) {
	bits := []uint64{rxStatVP, rxStatUDPCS, rxStatL4CS, rxStatIPCS, rxErrRXE, rxErrL4E, rxErrIPE}
	const length, tci = 1514, 0x2064
	for combo := range 1 << len(bits) {
		st := uint64(rxStatDD|rxStatEOP) | length<<rxLenShift | tci<<rxVLANShift
		for i, b := range bits {
			if combo&(1<<i) != 0 {
				st |= b
			}
		}
		var d ring.RxDone
		decodeRx(&d, st, 77)
		wantIP, wantL4 := ring.CsumUnknown, ring.CsumUnknown
		if st&rxStatIPCS != 0 {
			wantIP = ring.CsumGood
			if st&rxErrIPE != 0 {
				wantIP = ring.CsumBad
			}
		}
		if st&(rxStatL4CS|rxStatUDPCS) != 0 {
			wantL4 = ring.CsumGood
			if st&rxErrL4E != 0 {
				wantL4 = ring.CsumBad
			}
		}
		vp := st&rxStatVP != 0
		wantVLAN := uint16(0)
		if vp {
			wantVLAN = tci
		}
		if d.Cookie != 77 || d.Len != length || !d.EOP() || d.RxError() != (st&rxErrRXE != 0) ||
			d.VLANStripped() != vp || d.VLAN != wantVLAN || d.IPCsum() != wantIP || d.L4Csum() != wantL4 {
			t.Errorf("status %#x: cookie %d len %d EOP %v error %v stripped %v VLAN %#x IP %v L4 %v; want error %v stripped %v VLAN %#x IP %v L4 %v",
				st, d.Cookie, d.Len, d.EOP(), d.RxError(), d.VLANStripped(), d.VLAN, d.IPCsum(), d.L4Csum(),
				st&rxErrRXE != 0, vp, wantVLAN, wantIP, wantL4)
		}
	}
	// Before a frame's last buffer only the length counts, whatever else
	// the write-back holds, and a reused RxDone keeps nothing of before.
	d := ring.RxDone{Flags: ring.RxFlagEOP | ring.RxFlagError, VLAN: 5}
	decodeRx(&d, rxStatDD|rxStatVP|rxStatIPCS|rxErrRXE|2048<<rxLenShift|tci<<rxVLANShift, 9)
	if d != (ring.RxDone{Cookie: 9, Len: 2048}) {
		t.Errorf("non-EOP write-back decoded as %+v, want only cookie 9 and length 2048", d)
	}
}
