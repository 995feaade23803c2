package vhost

import (
	"testing"

	"golang.org/x/sys/unix"
)

// BenchmarkSignal is the poll core's cost of one notification: before,
// a write(2) of the call eventfd on the lcore; now, marking the notifier
// pending and waking its goroutine, which writes. A reader drains the
// eventfd as a front end would.
func BenchmarkSignal(b *testing.B) {
	newFD := func(b *testing.B) int {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK)
		if err != nil {
			b.Fatal(err)
		}
		return fd
	}
	b.Run("write-on-lcore", func(b *testing.B) {
		fd := newFD(b)
		defer unix.Close(fd)
		one := [8]byte{1}
		b.ReportAllocs()
		for b.Loop() {
			_, _ = unix.Write(fd, one[:])
		}
	})
	b.Run("notifier", func(b *testing.B) {
		n := newNotifier(newFD(b))
		defer func() { n.release(); <-n.done }()
		b.ReportAllocs()
		for b.Loop() {
			n.signal()
		}
		b.ReportMetric(float64(n.signals.Load())/float64(b.N), "writes/signal")
	})
}

// TestNotifierReleaseEndsItsGoroutine: release closes the descriptor and
// ends the goroutine, also when no signal ever came.
func TestNotifierReleaseEndsItsGoroutine(t *testing.T) {
	for _, signals := range []int{0, 3} {
		fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
		if err != nil {
			t.Fatal(err)
		}
		n := newNotifier(fd)
		for range signals {
			n.signal()
		}
		n.release()
		<-n.done
		if _, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0); err != unix.EBADF {
			t.Fatalf("%d signals: descriptor still open after release (%v)", signals, err)
		}
		n.release() // a second release is harmless
		n.signal()  // and so is a late signal
	}
}
