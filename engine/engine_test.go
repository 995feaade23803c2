package engine

import (
	"context"
	"testing"
	"time"

	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
)

func TestAccessPlatformFallsBackToCopy(t *testing.T) {
	r := newRig(t, rigOptions{features: vhost.DefaultFeatures | vhost.FAccessPlatform,
		guest: guest.Options{Features: guest.DefaultWanted | vhost.FAccessPlatform, RxBufSize: 4096}, frame: 600})
	if r.g.Features&vhost.FAccessPlatform == 0 {
		t.Fatal("ACCESS_PLATFORM was not negotiated")
	}
	r.postRx(t, 32)
	r.gen.Emit(32)
	checkIntact(t, r.receive(t, 32), r.input.take())
	want := testFrames(20, 500)
	sameFrames(t, r.transmit(t, want), want)
	st := r.channel.Stats()
	if st.RxCopied != 32 || st.TxCopied != 20 || st.RxZeroCopy+st.TxZeroCopy != 0 || st.Copy.Features != 52 {
		t.Fatalf("want every frame copied for the ACCESS_PLATFORM feature: %+v", st)
	}
}

func TestNewMemoryTableWhileRunning(t *testing.T) {
	r := newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}})
	r.postRx(t, 64)
	r.gen.Emit(16)
	checkIntact(t, r.receive(t, 16), r.input.take())
	r.channel.Poll()
	// Frames in guest buffers on the NIC, TX packets submitted not sent.
	r.gen.Emit(4)
	r.pf.Step()
	for _, f := range testFrames(10, 300) {
		if err := r.g.Transmit(0, vhost.NetHeader{}, f); err != nil {
			t.Fatal(err)
		}
	}
	r.channel.Poll()
	restarts := r.channel.Stats().Restarts
	regions := r.g.Mem.Regions()
	fds := make([]int, len(regions))
	for i := range fds {
		fds[i] = r.g.Mem.FD()
	}
	if _, err := r.g.FE.Request(vhost.ReqSetMemTable, vhost.EncodeMemTable(regions), fds...); err != nil {
		t.Fatal(err)
	}
	if n := r.rxHeld(); n != 0 {
		t.Fatalf("%d guest buffers left on the NIC across a memory table change", n)
	}
	if n := r.dma.Mapped(); n != len(regions) {
		t.Fatalf("%d regions DMA-mapped after the new table, want %d (old ones unmapped)", n, len(regions))
	}
	if st := r.channel.Stats(); st.Restarts <= restarts {
		t.Fatalf("the channel did not stop its NIC queues for the new table: %+v", st)
	}
	got, err := r.g.Receive(0)
	if err != nil {
		t.Fatal(err)
	}
	checkIntact(t, got, r.input.take()) // the 4 frames the NIC had written
	r.g.ReclaimTx(0)
	r.wire.take()
	// The rings kept running on the new mapping: traffic resumes.
	r.postRx(t, 64)
	r.gen.Emit(32)
	checkIntact(t, r.receive(t, 32), r.input.take())
	want := testFrames(20, 700)
	sameFrames(t, r.transmit(t, want), want)
	if c := r.pf.Counters(); c.IOMMUFaults != 0 {
		t.Fatalf("%d IOMMU faults", c.IOMMUFaults)
	}
}

// TestTwoGuestsOnOneLcore runs two guests' channels, each on its own NIC
// queue pair (of two simulated 82599s running free), on one pinned lcore.
// startOnOneLcore starts the rigs' simulators free-running and their channels
// on one lcore, with 128 receive buffers posted by each guest, and stops
// them all when the test ends.
func startOnOneLcore(t *testing.T, rigs []*rig) *pollmode.Runner {
	t.Helper()
	tasks := make([]pollmode.Task, len(rigs))
	for i, r := range rigs {
		tasks[i] = r.channel
	}
	run, err := pollmode.NewRunner(pollmode.RunnerOptions{Idle: pollmode.IdleYield}, []pollmode.LcoreConfig{{ID: 0, CPU: pollCPU(t), Tasks: tasks}})
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range rigs {
		r.pf.Start()
		if err := r.g.PostRx(0, 128); err != nil {
			t.Fatal(err)
		}
	}
	if err := run.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stopped := make(chan error, 1)
		go func() { stopped <- run.Stop() }()
		select {
		case err := <-stopped:
			if err != nil {
				t.Errorf("lcore: %v", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("the lcore did not stop in 10 s")
		}
		for _, r := range rigs {
			r.pf.Stop()
		}
	})
	return run
}

func TestTwoGuestsOnOneLcore(t *testing.T) {
	rigs := []*rig{newRig(t, rigOptions{guest: guest.Options{RxBufSize: 4096}}), newRig(t, rigOptions{guest: guest.Options{RxBufSize: 2048}})}
	run := startOnOneLcore(t, rigs)
	// Frames arriving before the channel posted guest buffers would be
	// dropped by the NIC: start the traffic once both have.
	for i, r := range rigs {
		for start := time.Now(); r.rxHeld() == 0; time.Sleep(100 * time.Microsecond) {
			if time.Since(start) > 5*time.Second {
				t.Fatalf("channel %d never posted the guest's buffers to the NIC", i)
			}
		}
	}
	const n = 300
	got := make([][]guest.Packet, len(rigs))
	sentTx := make([]int, len(rigs))
	tx := testFrames(n, 400)
	var wire [2][][]byte
	deadline := time.Now().Add(20 * time.Second)
	// Each rig has at most a burst in flight, so a descheduled poller on a
	// loaded machine delays the test instead of making the NIC drop.
	var emitted [2]int
	for time.Now().Before(deadline) {
		done := true
		for i, r := range rigs {
			if emitted[i] < n && emitted[i]-len(got[i]) < 20 {
				r.gen.Emit(10)
				emitted[i] += 10
			}
			pk, err := r.g.Receive(0)
			if err != nil {
				t.Fatal(err)
			}
			got[i] = append(got[i], pk...)
			if free := r.g.Ring(0).Free(); free > 0 {
				_ = r.g.PostRx(0, free)
			}
			r.g.ReclaimTx(0)
			for sentTx[i] < n && r.g.Transmit(0, vhost.NetHeader{}, tx[sentTx[i]]) == nil {
				sentTx[i]++
			}
			wire[i] = append(wire[i], r.wire.take()...)
			done = done && len(got[i]) == n && len(wire[i]) == n
		}
		if done {
			break
		}
		time.Sleep(200 * time.Microsecond)
	}
	for i, r := range rigs {
		checkIntact(t, got[i], r.input.take())
		if len(wire[i]) != n {
			t.Fatalf("guest %d: wire got %d of %d frames", i, len(wire[i]), n)
		}
		sameFrames(t, wire[i], tx)
		st := r.channel.Stats()
		if st.RxZeroCopy != n || st.TxZeroCopy != n {
			t.Fatalf("guest %d: want everything zero-copy: %+v", i, st)
		}
	}
	// The lcore publishes its counters every few rounds: on a loaded
	// machine the last frames can be moved before it has.
	ls := run.Stats()
	for end := time.Now().Add(5 * time.Second); (len(ls) != 1 || ls[0].BusyRounds == 0) && time.Now().Before(end); ls = run.Stats() {
		time.Sleep(time.Millisecond)
	}
	if len(ls) != 1 || ls[0].BusyRounds == 0 {
		t.Fatalf("lcore stats %+v", ls)
	}
}

// pollCPU is a CPU the test's lcore may run on.
func pollCPU(t *testing.T) int {
	t.Helper()
	cpus, err := pollmode.AllowedCPUs()
	if err != nil {
		t.Fatal(err)
	}
	if len(cpus) == 0 {
		t.Fatal("the process has no allowed CPUs")
	}
	return cpus[0]
}
