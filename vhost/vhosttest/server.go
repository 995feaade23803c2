// Package vhosttest holds what tests of vhost-user back ends share, as
// net/http/httptest does for HTTP: a device served on a socket in the
// test's temporary directory, and Loopback, a device mode that echoes the
// guest's frames back to it.
package vhosttest

import (
	"context"
	"path/filepath"
	"sync"
	"testing"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/zcnet/zcnet/vhost"
)

// Server is a device served in server mode on a unix socket until the
// test ends.
type Server struct {
	Dev  *vhost.Device
	Path string // the socket a front end dials
}

// Serve creates a device from cfg (logging to the test at info level
// unless cfg has a logger) and serves it with opts on a fresh socket until
// the test ends.
func Serve(tb testing.TB, cfg vhost.Config, opts ...vhost.ServeOption) *Server {
	tb.Helper()
	if cfg.Logger == nil {
		cfg.Logger = zaptest.NewLogger(tb, zaptest.Level(zap.InfoLevel))
	}
	dev, err := vhost.NewDevice(cfg)
	if err != nil {
		tb.Fatal(err)
	}
	return ServeDevice(tb, dev, opts...)
}

// ServeDevice serves dev with opts on a fresh socket until the test ends;
// then the session is over (guest memory released) before the test's
// other cleanups that were registered earlier run.
func ServeDevice(tb testing.TB, dev *vhost.Device, opts ...vhost.ServeOption) *Server {
	tb.Helper()
	path := filepath.Join(tb.TempDir(), "vhost.sock")
	l, err := vhost.Listen(path)
	if err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		if err := vhost.ServeListener(ctx, l, dev, opts...); err != nil {
			tb.Errorf("ServeListener: %v", err)
		}
	}()
	tb.Cleanup(func() { cancel(); wg.Wait() })
	return &Server{Dev: dev, Path: path}
}
