package guest_test

import (
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

func TestLoopbackRoundTrip(t *testing.T) {
	cases := []struct {
		name string
		dev  vhost.Config
		opt  guest.Options
		lens []int
	}{
		{name: "mergeable", opt: guest.Options{}, lens: sizes(100, 60, 1514, 3000, 64, 9000-14)},
		{name: "no-mrg-rxbuf", opt: guest.Options{Features: guest.DefaultWanted &^ vhost.NetFMrgRxbuf, RxBufSize: 2048},
			lens: sizes(100, 60, 1514, 2000, 64)},
		{name: "no-mrg-rxbuf-chained", opt: guest.Options{Features: guest.DefaultWanted &^ vhost.NetFMrgRxbuf, RxBufSize: 12288, RxChainDescs: 4},
			lens: sizes(40, 60, 1514, 9000, 64)},
		{name: "indirect-tx", opt: guest.Options{TxIndirect: true, TxSplit: true}, lens: sizes(100, 60, 1514, 200)},
		{name: "split-tx-descs", opt: guest.Options{TxSplit: true}, lens: sizes(100, 61, 1514, 999)},
		{name: "no-event-idx", opt: guest.Options{Features: guest.DefaultWanted &^ vhost.FEventIdx}, lens: sizes(100, 60, 1514)},
		{name: "two-regions", opt: guest.Options{Memory: guest.MemoryOptions{Split: true, Size: 16 << 20}}, lens: sizes(100, 60, 1514, 4000)},
		{name: "hugetlb", opt: guest.Options{Memory: guest.MemoryOptions{Hugetlb: true}}, lens: sizes(50, 60, 1514)},
		{name: "small-ring", opt: guest.Options{QueueSize: 16}, lens: sizes(100, 60, 1514, 3000)},
		{name: "no-call-fd", opt: guest.Options{NoCallFD: true}, lens: sizes(20, 60, 1514)},
		{name: "dpdk-virtio-user", dev: vhost.Config{Features: vhost.DefaultFeatures | vhost.FInOrder},
			opt: guest.Options{DPDKOrder: true, Features: vhost.FVersion1 | vhost.NetFMrgRxbuf | vhost.FIndirectDesc | vhost.FInOrder | vhost.FProtocolFeatures,
				Memory: guest.MemoryOptions{IdentityMap: true, Split: true}}, lens: sizes(60, 60, 1514, 4000)},
		{name: "packed", dev: vhost.Config{Features: vhost.DefaultFeatures | vhost.FRingPacked},
			opt: guest.Options{Features: guest.DefaultWanted | vhost.FRingPacked}, lens: sizes(300, 60, 1514, 3000, 64)},
		{name: "packed-indirect-no-mrg", dev: vhost.Config{Features: vhost.DefaultFeatures | vhost.FRingPacked},
			opt:  guest.Options{Features: (guest.DefaultWanted | vhost.FRingPacked) &^ vhost.NetFMrgRxbuf, TxIndirect: true, TxSplit: true, QueueSize: 64},
			lens: sizes(300, 60, 1514, 777)},
		{name: "packed-split-tx-small-ring", dev: vhost.Config{Features: vhost.DefaultFeatures | vhost.FRingPacked},
			opt:  guest.Options{Features: guest.DefaultWanted | vhost.FRingPacked, TxSplit: true, QueueSize: 16},
			lens: sizes(300, 60, 1514, 3000)},
		{name: "in-order", dev: vhost.Config{Features: vhost.DefaultFeatures | vhost.FInOrder},
			opt: guest.Options{Features: guest.DefaultWanted | vhost.FInOrder}, lens: sizes(50, 60, 1514)},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			b := startBackend(t, c.dev)
			g := dial(t, b, c.opt)
			if err := g.PostRx(0, int(g.Ring(0).Size())/max(1, c.opt.RxChainDescs)); err != nil {
				t.Fatal(err)
			}
			roundTrip(t, b, g, 0, c.lens)
			if c := b.loop.Counters(); c.Dropped != 0 {
				t.Fatalf("loopback dropped frames: %+v", c)
			}
		})
	}
}

func TestLoopbackMultiqueue(t *testing.T) {
	const pairs = 4
	b := startBackend(t, vhost.Config{QueuePairs: pairs})
	g := dial(t, b, guest.Options{QueuePairs: pairs})
	for p := range pairs {
		if err := g.PostRx(p, 64); err != nil {
			t.Fatal(err)
		}
	}
	for p := range pairs {
		roundTrip(t, b, g, p, sizes(40+p, 60+p, 1514))
	}
	// Disabling pair 3's RX ring stops delivery there (frames are dropped)
	// while the other pairs continue.
	if err := g.SetEnable(2*3, false); err != nil {
		t.Fatal(err)
	}
	if err := g.Transmit(3, vhost.NetHeader{}, frame(1, 100)); err != nil {
		t.Fatal(err)
	}
	b.loop.Poll()
	if pk, _ := g.Receive(3); len(pk) != 0 {
		t.Fatalf("disabled RX ring delivered %d frames", len(pk))
	}
	if c := b.loop.Counters(); c.Dropped != 1 {
		t.Fatalf("want the frame for the disabled ring dropped, counters %+v", c)
	}
	roundTrip(t, b, g, 1, sizes(10, 60))
}
