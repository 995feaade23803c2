package vhost

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"time"

	"go.uber.org/zap"
)

// ErrBusy is returned when a second front end tries to use a device that
// already has one.
var ErrBusy = errors.New("vhost: device already has a front end connected")

// Serve runs the vhost-user protocol for d over one connection until the
// front end disconnects, a malformed message arrives, or ctx ends. When it
// returns, every ring is stopped and the guest memory is released: the next
// connection starts from scratch, as QEMU's reconnect replays everything.
// A clean disconnect returns nil.
func (d *Device) Serve(ctx context.Context, uc *net.UnixConn) error {
	if !d.busy.CompareAndSwap(false, true) {
		uc.Close()
		return ErrBusy
	}
	defer d.busy.Store(false)
	c, err := NewConn(uc)
	if err != nil {
		uc.Close()
		return err
	}
	defer d.endSession()
	defer c.Close()
	stop := context.AfterFunc(ctx, func() { c.Close() })
	defer stop()
	d.log.Info("front end connected")
	for {
		m, err := c.ReadMessage()
		if err != nil {
			if isClosed(err) || ctx.Err() != nil {
				d.log.Info("front end disconnected")
				return nil
			}
			d.log.Warn("dropping front end after a malformed message", zap.Error(err))
			return fmt.Errorf("vhost: device %q: %w", d.cfg.Name, err)
		}
		reply, respond, fatal := d.Dispatch(&m)
		if respond {
			if err := c.WriteMessage(Header{Request: m.Request, Flags: FlagVersion | FlagReply}, reply, nil); err != nil {
				if isClosed(err) {
					return nil
				}
				return fmt.Errorf("vhost: device %q: %w", d.cfg.Name, err)
			}
		}
		if fatal != nil {
			d.log.Warn("dropping front end", zap.Error(fatal))
			return fmt.Errorf("vhost: device %q: %w", d.cfg.Name, fatal)
		}
	}
}

// Listen creates the unix socket a front end in client mode (QEMU's
// default) connects to, replacing a stale socket file left by an earlier
// run.
func Listen(path string) (*net.UnixListener, error) {
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("vhost: %s is in use by another process", path)
		}
		_ = os.Remove(path)
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("vhost: listen on %s: %w", path, err)
	}
	return l, nil
}

// ServeListener is server mode: it accepts front ends on l one at a time
// and serves each until it goes away, until ctx ends. It closes l.
func ServeListener(ctx context.Context, l *net.UnixListener, d *Device) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	defer l.Close()
	for {
		uc, err := l.AcceptUnix()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("vhost: device %q: accept: %w", d.cfg.Name, err)
		}
		if err := d.Serve(ctx, uc); err != nil {
			d.log.Warn("session ended with an error; waiting for the front end to reconnect", zap.Error(err))
		}
	}
}

// Backoff bounds the delay between connection attempts in client mode.
type Backoff struct {
	Min, Max time.Duration
}

// DefaultBackoff retries after 10 ms, doubling up to 1 s.
var DefaultBackoff = Backoff{Min: 10 * time.Millisecond, Max: time.Second}

// DialAndServe is client mode: it connects to a front end listening on path
// (QEMU server=on, virtio-user server=1), serves it, and after every
// disconnect or failed attempt reconnects with exponential backoff, until
// ctx ends.
func DialAndServe(ctx context.Context, path string, d *Device, b Backoff) error {
	if b.Min <= 0 {
		b = DefaultBackoff
	}
	delay := b.Min
	var dialer net.Dialer
	for ctx.Err() == nil {
		c, err := dialer.DialContext(ctx, "unix", path)
		if err == nil {
			delay = b.Min
			if err := d.Serve(ctx, c.(*net.UnixConn)); err != nil {
				d.log.Warn("session ended with an error; reconnecting", zap.Error(err))
			}
			continue
		}
		d.log.Debug("front end not reachable; retrying", zap.String("path", path), zap.Duration("in", delay), zap.Error(err))
		t := time.NewTimer(delay)
		select {
		case <-ctx.Done():
			t.Stop()
		case <-t.C:
		}
		delay = min(2*delay, b.Max)
	}
	return nil
}
