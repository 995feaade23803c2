package dpdk_test

import (
	"context"
	"encoding/binary"
	"fmt"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/zcnet/zcnet/driver"
	"github.com/zcnet/zcnet/vhost"
)

// benchTime is how long each benchmark lets traffic flow.
const benchTime = 3 * time.Second

// A benchMode is what the guest (testpmd with virtio-user) does, and what
// the back end does in return.
type benchMode struct {
	name string
	// guest is testpmd's forwarding mode and extra arguments.
	guest []string
	// vhostFwd is net_vhost's testpmd forwarding mode for this guest mode.
	vhostFwd string
	// zcnetTask builds zcnet's poller for this guest mode.
	zcnetTask func(d *vhost.Device) driver.Task
	// rate picks the counter that measures the mode from the guest's
	// point of view.
	rate func(fwdStats) uint64
}

var benchModes = []benchMode{
	// The guest sends, the back end receives and discards.
	{name: "txonly", guest: []string{"--forward-mode=txonly"}, vhostFwd: "rxonly",
		zcnetTask: func(d *vhost.Device) driver.Task { return &sink{d: d} },
		rate:      func(s fwdStats) uint64 { return s.TxPackets }},
	// The back end sends, the guest receives and discards.
	{name: "rxonly", guest: []string{"--forward-mode=rxonly"}, vhostFwd: "txonly",
		zcnetTask: newSource,
		rate:      func(s fwdStats) uint64 { return s.RxPackets }},
	// Frames circulate: the guest forwards what the back end returns.
	{name: "io", guest: []string{"--forward-mode=io", "--tx-first"}, vhostFwd: "macswap",
		zcnetTask: func(d *vhost.Device) driver.Task { return vhost.NewLoopback(d) },
		rate:      func(s fwdStats) uint64 { return s.RxPackets }},
}

// BenchmarkVirtioUser measures the packet rate testpmd's virtio-user
// reaches against zcnet's back end and against DPDK's net_vhost, with
// 64-byte frames on a split ring with mergeable buffers, one queue pair,
// one forwarding core on each side. Run it with -benchtime 1x: each
// iteration is a benchTime run of testpmd; the figure is Mpps.
func BenchmarkVirtioUser(b *testing.B) {
	h := checkHost(b, 2)
	for _, m := range benchModes {
		b.Run("zcnet/"+m.name, func(b *testing.B) {
			var pkts uint64
			for range b.N {
				pkts += benchZcnet(b, h, m)
			}
			b.ReportMetric(float64(pkts)/float64(b.N)/benchTime.Seconds()/1e6, "Mpps")
		})
		b.Run("net_vhost/"+m.name, func(b *testing.B) {
			var pkts uint64
			for range b.N {
				pkts += benchNetVhost(b, h, m)
			}
			b.ReportMetric(float64(pkts)/float64(b.N)/benchTime.Seconds()/1e6, "Mpps")
		})
	}
}

func benchGuest(b *testing.B, h host, m benchMode, sock string) *testpmd {
	sc := scenario{name: "bench-" + m.name, devargs: "mrg_rxbuf=1"}
	app := append([]string{"--port-topology=loop", "--nb-cores=1", "--txpkts=64",
		fmt.Sprintf("--total-num-mbufs=%d", mbufPool)}, m.guest...)
	return startTestpmd(b, h, virtioUserLabel, eal(h.backendCPU, h.frontendCPU, sc.name+"-vu", sc.virtioUserVdev(sock)), app)
}

func benchZcnet(b *testing.B, h host, m benchMode) uint64 {
	d, err := vhost.NewDevice(vhost.Config{Name: "bench"})
	if err != nil {
		b.Fatal(err)
	}
	sock := filepath.Join(b.TempDir(), "vhost.sock")
	l, err := vhost.Listen(sock)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var serving sync.WaitGroup
	defer func() { cancel(); serving.Wait() }()
	serving.Go(func() { _ = vhost.ServeListener(ctx, l, d) })
	runner, err := driver.NewRunner(driver.RunnerOptions{},
		[]driver.LcoreConfig{{ID: 0, CPU: h.backendCPU, Tasks: []driver.Task{m.zcnetTask(d)}}})
	if err != nil {
		b.Fatal(err)
	}
	if err := runner.Start(ctx); err != nil {
		b.Fatal(err)
	}
	defer func() { _ = runner.Stop() }()
	guest := benchGuest(b, h, m, sock)
	guest.waitForwarding()
	time.Sleep(benchTime)
	return m.rate(guest.stop())
}

func benchNetVhost(b *testing.B, h host, m benchMode) uint64 {
	sock := filepath.Join(b.TempDir(), "vhost.sock")
	backend := startTestpmd(b, h, "net_vhost",
		eal(h.frontendCPU, h.backendCPU, "bench-"+m.name+"-vh", fmt.Sprintf("net_vhost0,iface=%s,queues=1", sock)),
		[]string{"-i", "--auto-start", "--forward-mode=" + m.vhostFwd, "--port-topology=loop", "--nb-cores=1",
			"--txpkts=64", fmt.Sprintf("--total-num-mbufs=%d", mbufPool)})
	backend.waitForwarding()
	guest := benchGuest(b, h, m, sock)
	guest.waitForwarding()
	time.Sleep(benchTime)
	s := guest.stop()
	backend.stopForwarding()
	backend.quit()
	return m.rate(s)
}

// sink is a back end that takes every frame the guest transmits and drops
// it: the device side of a txonly guest.
type sink struct {
	d *vhost.Device
	c vhost.Chain
}

func (s *sink) Name() string { return "sink" }

func (s *sink) Poll() int {
	if s.c.Segs == nil {
		s.c.Segs = make([]vhost.Segment, 0, 64)
	}
	s.d.LockDataPath()
	defer s.d.UnlockDataPath()
	q := s.d.TxQueue(0)
	if q == nil {
		return 0
	}
	n := 0
	for ; n < defaultBurst; n++ {
		if ok, _ := q.Pop(&s.c); !ok {
			break
		}
		q.Push(s.c.Head, 0)
	}
	q.Flush()
	return n
}

// source is a back end that fills every RX buffer the guest posts with a
// 64-byte frame: the device side of an rxonly guest.
type source struct {
	d     *vhost.Device
	c     vhost.Chain
	frame []byte // virtio-net header (num_buffers 1) + Ethernet frame
}

func newSource(d *vhost.Device) driver.Task {
	f := make([]byte, netHeaderLen+64)
	binary.LittleEndian.PutUint16(f[10:], 1) // num_buffers
	eth := f[netHeaderLen:]
	copy(eth, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5}) // local experimental EtherType
	return &source{d: d, c: vhost.Chain{Segs: make([]vhost.Segment, 0, 64)}, frame: f}
}

func (s *source) Name() string { return "source" }

func (s *source) Poll() int {
	s.d.LockDataPath()
	defer s.d.UnlockDataPath()
	q := s.d.RxQueue(0)
	if q == nil {
		return 0
	}
	n := 0
	for ; n < defaultBurst; n++ {
		ok, err := q.Pop(&s.c)
		if !ok {
			break
		}
		written := 0
		if err == nil {
			segs := s.c.Segs
			for len(segs) > 0 && !segs[0].Writable {
				segs = segs[1:]
			}
			written = vhost.Scatter(segs, 0, s.frame)
		}
		q.Push(s.c.Head, uint32(written))
	}
	q.Flush()
	return n
}
