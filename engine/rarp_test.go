package engine

import (
	"bytes"
	"testing"

	"github.com/zcnet/zcnet/vhost"
)

// TestSendRARPOnTheWire: a SEND_RARP from the front end (QEMU on the
// destination of a live migration) puts one RARP from the guest's MAC on
// the NIC's wire, from a host buffer, counted as TxRARP and not as a guest
// packet; the guest's own traffic is unaffected and nothing is sent twice.
func TestSendRARPOnTheWire(t *testing.T) {
	r := newRig(t, rigOptions{migration: true})
	mac := [6]byte{0x52, 0x54, 0x00, 0xab, 0xcd, 0xef}
	if _, err := r.g.FE.Request(vhost.ReqSendRARP, append(mac[:], 0, 0)); err != nil {
		t.Fatalf("SEND_RARP: %v", err)
	}
	// The TX queue runs once the guest's rings do.
	r.postRx(t, 16)
	var frames [][]byte
	for i := 0; i < 200 && len(frames) == 0; i++ {
		r.step()
		frames = append(frames, r.wire.take()...)
	}
	for range 50 {
		r.step()
		frames = append(frames, r.wire.take()...)
	}
	want := vhost.AppendRARP(nil, mac)
	if len(frames) != 1 || !bytes.Equal(frames[0], want) {
		t.Fatalf("on the wire: %d frames, first % x; want one RARP % x", len(frames), first(frames), want)
	}
	st := r.channel.Stats()
	if st.TxRARP != 1 || st.TxPackets != 0 {
		t.Fatalf("stats: TxRARP %d, TxPackets %d; want 1 and 0", st.TxRARP, st.TxPackets)
	}
}

func first(f [][]byte) []byte {
	if len(f) == 0 {
		return nil
	}
	return f[0]
}
