package engine

import (
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

// TestTxQuiesceCountsOnlyUnsent: packets the NIC sent before the channel
// stopped its TX queue, their completions not yet reclaimed, were sent:
// tx_quiesce counts only the packets the NIC never sent, and the guest
// gets every chain back.
func TestTxQuiesceCountsOnlyUnsent(t *testing.T) {
	r := newRig(t, rigOptions{channel: ChannelConfig{TxCompleteBatch: 64}})
	for _, f := range testFrames(8, 300) {
		if err := r.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
	}
	r.channel.Poll() // submitted
	r.pf.Step()      // sent; the channel has not reclaimed them
	if err := r.channel.Close(); err != nil {
		t.Fatal(err)
	}
	st := r.channel.Stats()
	if sent := len(r.wire.take()); sent != 8 || st.TxPackets != 8 || st.Drops.TxQuiesce != 0 {
		t.Fatalf("the NIC sent %d of %d packets; tx_quiesce %d, want 0", sent, st.TxPackets, st.Drops.TxQuiesce)
	}
	if used := r.g.Ring(1).UsedIdx(); used != 8 {
		t.Fatalf("the guest got %d of its 8 transmit chains back", used)
	}
}

// TestBrokenTxRingGivesBackInFlight: the guest breaks its transmit ring (a
// chain pointing outside its memory) while packets it made available
// before are on the NIC, and completions of earlier ones are not yet
// published. The channel stops serving the ring, but every chain it took goes
// back to the used ring, published (the guest resets the device, but its
// buffers and the count of what was taken stay exact), packets the NIC
// sent count as sent, only those it never sent as tx_quiesce, and the NIC
// holds nothing of the guest.
func TestBrokenTxRingGivesBackInFlight(t *testing.T) {
	for _, c := range []struct {
		name     string
		sendLast bool // the NIC sends the last packets before the channel stops
	}{{"last packets sent", true}, {"last packets unsent", false}} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOptions{channel: ChannelConfig{TxCompleteBatch: 64}})
			transmit := func(n int) {
				for _, f := range testFrames(n, 300) {
					if err := r.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
						t.Fatal(err)
					}
				}
			}
			transmit(8)
			r.channel.Poll() // submitted
			r.pf.Step()      // sent
			transmit(4)
			base := r.g.Mem.Regions()[0].GuestPhysAddr
			if _, err := r.g.Ring(1).Add([]guest.Buf{{GPA: base - 4096, Len: 60}}, false); err != nil {
				t.Fatal(err)
			}
			if err := r.g.FlushTx(0); err != nil {
				t.Fatal(err)
			}
			// Reclaims the first 8 (completions pushed, not yet
			// published: fewer than the batch), submits 4, pops the
			// garbage chain: the ring breaks.
			r.channel.Poll()
			if st := r.channel.Stats(); st.GuestErrors != 1 || st.TxPackets != 12 {
				t.Fatalf("want the ring broken after 12 packets taken: %+v", st)
			}
			if c.sendLast {
				r.pf.Step()
			}
			r.channel.Poll() // finds the ring broken
			for range 4 {
				r.pf.Step()
			}
			r.dev.LockDataPath()
			running, onNIC := r.channel.txRunning, r.channel.tx.zcHeads
			r.dev.UnlockDataPath()
			if running || onNIC != 0 {
				t.Fatalf("the channel still serves the broken ring: queue running %v, %d packets on the NIC", running, onNIC)
			}
			sent, unsent := 12, 0
			if !c.sendLast {
				sent, unsent = 8, 4
			}
			st := r.channel.Stats()
			if got := len(r.wire.take()); got != sent || st.Drops.TxQuiesce != uint64(unsent) {
				t.Fatalf("the NIC sent %d packets, tx_quiesce %d; want %d sent, %d unsent", got, st.Drops.TxQuiesce, sent, unsent)
			}
			if used := r.g.Ring(1).UsedIdx(); used != 12 {
				t.Fatalf("the guest sees %d of the 12 chains zcnet took used", used)
			}
		})
	}
}
