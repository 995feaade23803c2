package vhost

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync/atomic"

	"golang.org/x/sys/unix"
)

// Notifications to the front end (the call and err eventfds) are written
// off the poll core. An eventfd write blocks while the counter is at its
// maximum (0xfffffffffffffffe) and the fd is in blocking mode; a front end
// can set the counter there, and it shares the file description, so it can
// also clear O_NONBLOCK again after we set it. A write on the lcore would
// then stop every port the lcore polls, and the session teardown (which
// waits for the data-path lock) with it. So the poll core only marks a
// notifier pending, an atomic store and a channel send that never wait,
// and the notifier's own goroutine makes the write. If that write blocks,
// only this front end's notifications stop.

// notifier delivers signals to one front-end eventfd. Its goroutine owns
// the fd and closes it once released.
type notifier struct {
	fd       int
	pending  atomic.Bool
	released atomic.Bool
	writing  atomic.Bool // the goroutine is in write(2), or about to be
	wake     chan struct{}
	freed    chan struct{} // closed when release is done with fd
	done     chan struct{} // closed when the goroutine has closed fd
	signals  atomic.Uint64 // writes made
}

// errNotEventfd is returned for a call, err or kick descriptor that is
// not an eventfd.
var errNotEventfd = errors.New("not an eventfd")

// checkEventfd reports whether fd is an eventfd: what the kernel shows as
// its /proc/self/fd link target is the anonymous inode's name.
func checkEventfd(fd int) error {
	target, err := os.Readlink("/proc/self/fd/" + strconv.Itoa(fd))
	if err != nil {
		return fmt.Errorf("inspecting descriptor: %w", err)
	}
	if target != "anon_inode:[eventfd]" {
		return fmt.Errorf("%w (it is %q)", errNotEventfd, target)
	}
	return nil
}

// newNotifier takes ownership of eventfd fd and starts its goroutine.
func newNotifier(fd int) *notifier {
	n := &notifier{fd: fd, wake: make(chan struct{}, 1), freed: make(chan struct{}), done: make(chan struct{})}
	go n.run()
	return n
}

// signal asks for one notification; signals made while one is pending
// merge into it, as eventfd writes do. It never blocks.
func (n *notifier) signal() {
	if n.pending.Swap(true) {
		return
	}
	n.poke()
}

func (n *notifier) poke() {
	select {
	case n.wake <- struct{}{}:
	default:
	}
}

func (n *notifier) run() {
	defer close(n.done)
	one := [8]byte{1}
	for range n.wake {
		if !n.pending.Swap(false) && !n.released.Load() {
			continue
		}
		// writing is set before released is checked, and release sets
		// released before it checks writing: one of the two sees the
		// other, so a write release could not unblock never starts.
		n.writing.Store(true)
		if n.released.Load() {
			break
		}
		_, _ = unix.Write(n.fd, one[:])
		n.writing.Store(false)
		n.signals.Add(1)
	}
	<-n.freed // release no longer touches fd: it is ours to close
	unix.Close(n.fd)
}

// release stops the notifier; its goroutine closes the fd once out of any
// write. A write the front end holds blocked (the counter at its maximum)
// is freed by reading the counter back: the front end is going away, and
// our own read is the only thing that can end that write. It reads only
// when the eventfd is readable, so release never blocks. Call it at most
// once the notifier is no longer signalled.
func (n *notifier) release() {
	if n == nil || n.released.Swap(true) {
		return
	}
	if n.writing.Load() {
		fds := []unix.PollFd{{Fd: int32(n.fd), Events: unix.POLLIN}}
		if k, _ := unix.Poll(fds, 0); k == 1 && fds[0].Revents&unix.POLLIN != 0 {
			var b [8]byte
			_, _ = unix.Read(n.fd, b[:])
		}
	}
	close(n.freed)
	n.poke()
}
