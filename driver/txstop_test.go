package driver

import (
	"testing"

	"github.com/zcnet/zcnet/vhost"
)

// TestTxQuiesceCountsOnlyUnsent: packets the NIC sent before the port
// stopped its TX queue, their completions not yet reclaimed, were sent:
// tx_quiesce counts only the packets the NIC never sent, and the guest
// gets every chain back.
func TestTxQuiesceCountsOnlyUnsent(t *testing.T) {
	r := newRig(t, rigOptions{port: PortConfig{TxCompleteBatch: 64}})
	for _, f := range testFrames(8, 300) {
		if err := r.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
	}
	r.port.Poll() // submitted
	r.pf.Step()   // sent; the port has not reclaimed them
	if err := r.port.Close(); err != nil {
		t.Fatal(err)
	}
	st := r.port.Stats()
	if sent := len(r.wire.take()); sent != 8 || st.TxPackets != 8 || st.Drops.TxQuiesce != 0 {
		t.Fatalf("the NIC sent %d of %d packets; tx_quiesce %d, want 0", sent, st.TxPackets, st.Drops.TxQuiesce)
	}
	if used := r.g.Ring(1).UsedIdx(); used != 8 {
		t.Fatalf("the guest got %d of its 8 transmit chains back", used)
	}
}
