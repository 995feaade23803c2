package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/vhost"
)

// The telemetry socket: a client connects, the instance writes one JSON
// appliance.Snapshot followed by a newline and closes the connection. Nothing is
// read from the client, so a slow or hostile one cannot stall the data
// path (snapshots read published counters only).

// defaultTelemetryPath is /run/zcnet/telemetry.sock for root and
// $XDG_RUNTIME_DIR/zcnet/telemetry.sock otherwise (the temporary directory
// if that is unset).
func defaultTelemetryPath() string {
	dir := "/run"
	if os.Geteuid() != 0 {
		dir = os.Getenv("XDG_RUNTIME_DIR")
		if dir == "" {
			dir = os.TempDir()
		}
	}
	return filepath.Join(dir, "zcnet", "telemetry.sock")
}

// telemetry serves snapshots on a unix socket and, if asked, Prometheus
// metrics on an HTTP address (metrics.go).
type telemetry struct {
	log      *zap.Logger
	snap     func() appliance.Snapshot
	listener *net.UnixListener
	http     *http.Server
	metrics  net.Listener
	wg       sync.WaitGroup

	closeOnce sync.Once
}

// openTelemetry binds the telemetry socket at path ("" for none) and the
// metrics address ("" for none) without serving yet. The commands call it
// before they start anything, so that a second instance given the same
// path or address fails at once instead of after its data path started.
func openTelemetry(log *zap.Logger, path, metricsAddr string) (*telemetry, error) {
	t := &telemetry{log: log}
	if path != "" {
		l, err := listenTelemetry(path)
		if err != nil {
			return nil, err
		}
		t.listener = l
	}
	if metricsAddr != "" {
		l, err := net.Listen("tcp", metricsAddr)
		if err != nil {
			t.close()
			return nil, fmt.Errorf("--metrics-addr %s: %w", metricsAddr, err)
		}
		t.metrics = l
	}
	return t, nil
}

// serve answers requests with snap, called once per request, from now
// until close.
func (t *telemetry) serve(snap func() appliance.Snapshot) {
	t.snap = snap
	if t.listener != nil {
		t.wg.Add(1)
		go t.serveSocket()
	}
	if t.metrics != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", newMetricsHandler(t.log, t.snap))
		t.http = &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			if err := t.http.Serve(t.metrics); err != nil && !errors.Is(err, http.ErrServerClosed) {
				t.log.Warn("metrics endpoint stopped", zap.Error(err))
			}
		}()
	}
}

// listenTelemetry creates the socket, mode 0600 (and its directory,
// private to the user), replacing a stale socket file but refusing one still in use.
func listenTelemetry(path string) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("telemetry socket directory: %w (choose another with --telemetry)", err)
	}
	// Mode 0600 whatever the umask: the counters are the operator's.
	l, err := vhost.ListenWith(path, vhost.SocketOptions{Mode: 0o600})
	if errors.Is(err, vhost.ErrSocketInUse) {
		return nil, fmt.Errorf("telemetry socket %s is in use by another zcnet; give this one another --telemetry path", path)
	}
	if err != nil {
		return nil, fmt.Errorf("telemetry socket: %w", err)
	}
	return l, nil
}

func (t *telemetry) serveSocket() {
	defer t.wg.Done()
	for {
		c, err := t.listener.Accept()
		if err != nil {
			return // closed
		}
		s := t.snap()
		_ = c.SetWriteDeadline(time.Now().Add(2 * time.Second))
		if err := json.NewEncoder(c).Encode(&s); err != nil {
			t.log.Debug("telemetry client went away", zap.Error(err))
		}
		c.Close()
	}
}

// close stops serving and removes the socket file. Calls after the first
// do nothing.
func (t *telemetry) close() {
	t.closeOnce.Do(func() {
		if t.listener != nil {
			t.listener.Close() // unlinks the socket file too
		}
		if t.http != nil {
			_ = t.http.Close()
		} else if t.metrics != nil {
			t.metrics.Close()
		}
		t.wg.Wait()
	})
}

// readTelemetry fetches one snapshot from the instance at path.
func readTelemetry(path string) (appliance.Snapshot, error) {
	var s appliance.Snapshot
	c, err := net.DialTimeout("unix", path, 2*time.Second)
	if err != nil {
		return s, fmt.Errorf("no zcnet instance at %s (is `zcnet run` or `zcnet sim` running? give its --telemetry path with --socket): %w", path, err)
	}
	defer c.Close()
	_ = c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if err := json.NewDecoder(bufio.NewReader(c)).Decode(&s); err != nil {
		return s, fmt.Errorf("read telemetry from %s: %w", path, err)
	}
	return s, nil
}

// sortedKeys are m's keys in order (the stats table lists causes so).
func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}
