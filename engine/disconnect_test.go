package engine

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/ring"

	"github.com/zcnet/zcnet/pollmode"
	"github.com/zcnet/zcnet/sim"
	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/sim/wire"
	"github.com/zcnet/zcnet/vhost"
)

// checkPoolWhole asserts that every host buffer of the channel's copy pool is
// back home (none lost, and, the pool checking double frees, none twice).
func checkPoolWhole(t *testing.T, p *Channel) {
	t.Helper()
	if got, want := p.pool.Available(), p.pool.Cap(); got != want {
		t.Fatalf("copy pool has %d of its %d buffers after the channel closed", got, want)
	}
}

// checkInOrder asserts that the frames the guest got are intact copies of
// sent frames, in the order sent, none twice (frames the NIC dropped are
// missing).
func checkInOrder(t *testing.T, got []guest.Packet, sent [][]byte) {
	t.Helper()
	j := 0
	for i := range got {
		for j < len(sent) && !bytes.Equal(got[i].Frame, sent[j]) {
			j++
		}
		if j == len(sent) {
			t.Fatalf("frame %d received (of %d) is not a sent frame, or is out of order or repeated", i, len(got))
		}
		j++
	}
}

// fillPending lets frames arrive in host buffers while the guest has no
// receive buffer, until the channel's queue of undelivered completions is
// full (the channel keeps topping the NIC up with host buffers, so frames
// keep arriving until then), and returns how many frames wait there.
func fillPending(t *testing.T, r *rig) int {
	t.Helper()
	for range 20 {
		r.gen.Emit(32)
		for range 4 {
			r.step()
		}
	}
	r.dev.LockDataPath()
	defer r.dev.UnlockDataPath()
	if n, c := len(r.channel.rx.pending), cap(r.channel.rx.pending); n != c {
		t.Fatalf("%d frames wait for guest buffers, want the queue full (%d)", n, c)
	}
	return len(r.channel.rx.pending)
}

// TestRxFullPendingDeliveredOnce: frames wait in host buffers until the
// channel's pending queue is full, then the guest posts enough buffers for
// all of them at once. Each buffer must go back to the pool exactly once
// (the pool panics on a double free) and each frame reach the guest once.
func TestRxFullPendingDeliveredOnce(t *testing.T) {
	for _, c := range []struct {
		name string
		copy bool
	}{{"copy", true}, {"zero-copy", false}} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOptions{channel: ChannelConfig{ForceCopy: c.copy}, guest: guest.Options{RxBufSize: 2048}, frame: 512})
			r.postRx(t, 1) // starts the RX queue
			waiting := fillPending(t, r)
			// More frames wait than the guest's ring holds buffers: it
			// posts what it can, takes them and posts again.
			var got []guest.Packet
			for range 16 {
				if err := r.g.PostRx(0, min(r.g.Ring(0).Free(), 1+waiting-len(got))); err != nil {
					t.Fatal(err)
				}
				r.channel.Poll()
				pk, err := r.g.Receive(0)
				if err != nil {
					t.Fatal(err)
				}
				got = append(got, pk...)
			}
			// The first frame took the guest's first buffer; the NIC
			// dropped what found no buffer at all, so the guest gets an
			// ordered selection of what was sent, each frame once.
			if want := 1 + waiting; len(got) != want {
				t.Fatalf("guest received %d frames, want %d", len(got), want)
			}
			checkInOrder(t, got, r.input.take())
			if err := r.channel.Close(); err != nil {
				t.Fatal(err)
			}
			checkPoolWhole(t, r.channel)
		})
	}
}

// TestGuestDisconnectUnderTraffic runs the channel on an lcore against a
// free-running simulated NIC fed at a high rate by the generator while a
// guest that lags behind echoes frames, then closes the guest mid-traffic.
// Nothing may panic (the lcore would stop and the data path with it), the
// channel must keep working, and every copy buffer must come home once.
func TestGuestDisconnectUnderTraffic(t *testing.T) {
	for _, c := range []struct {
		name string
		copy bool
	}{{"copy", true}, {"zero-copy", false}} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t, rigOptions{channel: ChannelConfig{ForceCopy: c.copy}, guest: guest.Options{RxBufSize: 2048}, frame: 512})
			gen, err := wire.NewGenerator(wire.GeneratorConfig{FrameSize: 512, Rate: 200000,
				DstMAC: wire.MAC(sim.DefaultOptions().MAC)}, r.pf)
			if err != nil {
				t.Fatal(err)
			}
			run, err := pollmode.NewRunner(pollmode.RunnerOptions{Idle: pollmode.IdleYield}, []pollmode.LcoreConfig{{ID: 0, CPU: pollCPU(t), Tasks: []pollmode.Task{r.channel}}})
			if err != nil {
				t.Fatal(err)
			}
			if err := r.g.PostRx(0, int(r.g.Ring(0).Size())); err != nil {
				t.Fatal(err)
			}
			r.pf.Start()
			defer r.pf.Stop()
			if err := run.Start(context.Background()); err != nil {
				t.Fatal(err)
			}
			stopped := false
			defer func() {
				if !stopped {
					_ = run.Stop()
				}
			}()
			if err := gen.Start(); err != nil {
				t.Fatal(err)
			}
			defer gen.Stop()

			// The guest echoes what it receives in bursts with long
			// pauses: frames fill its ring and then pile up in the channel,
			// which delivers them all at once when the guest wakes up.
			var echoed, received int
			for end := time.Now().Add(400 * time.Millisecond); time.Now().Before(end); {
				pk, err := r.g.Receive(0)
				if err != nil {
					t.Fatal(err)
				}
				received += len(pk)
				r.g.ReclaimTx(0)
				for _, p := range pk {
					if r.g.Transmit(0, vhost.NetHeader{}, p.Frame) == nil {
						echoed++
					}
				}
				if free := r.g.Ring(0).Free(); free > 0 {
					if err := r.g.PostRx(0, free); err != nil {
						t.Fatal(err)
					}
				}
				time.Sleep(40 * time.Millisecond)
			}
			// The guest goes away while the generator keeps sending.
			if err := r.g.Close(); err != nil {
				t.Fatal(err)
			}
			r.g = nil
			time.Sleep(50 * time.Millisecond)
			gen.Stop()
			stopped = true
			if err := run.Stop(); err != nil {
				var tp *pollmode.TaskPanicError
				if errors.As(err, &tp) {
					t.Fatalf("the lcore stopped on a panic: %v\n%s", tp.Value, tp.Stack)
				}
				t.Fatal(err)
			}
			r.pf.Stop()
			if err := r.channel.Err(); err != nil {
				t.Fatalf("channel failed: %v", err)
			}
			st := r.channel.Stats()
			t.Logf("guest received %d, echoed %d; channel %+v", received, echoed, st)
			if received == 0 || echoed == 0 || st.Restarts == 0 {
				t.Fatalf("want traffic both ways and the rings stopped by the disconnect: received %d, echoed %d, stats %+v", received, echoed, st)
			}
			if c.copy && (st.RxCopied == 0 || st.TxCopied == 0) {
				t.Fatalf("copy mode moved nothing through host buffers: %+v", st)
			}
			if err := r.channel.Close(); err != nil {
				t.Fatal(err)
			}
			checkPoolWhole(t, r.channel)
		})
	}
}

// panickyNIC is a NIC whose TX queue start panics, standing in for a bug
// in a poll round.
type panickyNIC struct{ ring.QueuePair }

func (panickyNIC) StartTx() error { panic("test: a bug in the poll round") }

// TestPollPanicReleasesLock: a panicking poll round (which stops the
// lcore) must not leave the guest's data-path lock held, or the protocol
// goroutine and Close would wait forever; the channel reports itself failed.
func TestPollPanicReleasesLock(t *testing.T) {
	r := newRig(t, rigOptions{})
	r.channel.nic = panickyNIC{r.channel.nic}
	func() {
		defer func() {
			if recover() == nil {
				t.Fatal("the poll round did not panic: the test exercises nothing")
			}
		}()
		r.channel.Poll()
	}()
	done := make(chan error, 1)
	go func() { done <- r.channel.Err() }()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "a poll round panicked") {
			t.Fatalf("Err() = %v, want the channel to report the panicked round", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the data-path lock is still held after a panicking poll round")
	}
	if err := r.channel.Close(); err != nil {
		t.Fatal(err)
	}
}
