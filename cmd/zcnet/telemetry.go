package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
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
// text on an HTTP address.
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
		mux.HandleFunc("/metrics", func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
			s := t.snap()
			writeMetrics(w, &s)
		})
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
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("telemetry socket directory: %w (choose another with --telemetry)", err)
	}
	if fi, err := os.Lstat(path); err == nil && fi.Mode()&os.ModeSocket != 0 {
		if c, err := net.Dial("unix", path); err == nil {
			c.Close()
			return nil, fmt.Errorf("telemetry socket %s is in use by another zcnet; give this one another --telemetry path", path)
		}
		_ = os.Remove(path)
	}
	// Mode 0600 whatever the umask: the counters are the operator's.
	l, err := vhost.ListenSocket(path, vhost.SocketOptions{Mode: 0o600})
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

// writeMetrics writes s in the Prometheus text exposition format (0.0.4):
// one HELP and TYPE line per metric family, then its samples.
func writeMetrics(w io.Writer, s *appliance.Snapshot) {
	m := &metricWriter{w: bufio.NewWriter(w)}
	defer m.w.Flush()
	m.family("zcnet_uptime_seconds", "gauge", "Seconds since the data path started.")
	m.sample("zcnet_uptime_seconds", nil, s.UptimeSeconds)

	nic := func(name, help string, get func(appliance.NICCounters) uint64) {
		m.family(name, "counter", help)
		for _, n := range s.NICs {
			m.sample(name, []string{"nic", n.Name}, float64(get(n)))
		}
	}
	nic("zcnet_nic_rx_packets_total", "Good packets the NIC received.", func(n appliance.NICCounters) uint64 { return n.RxPackets })
	nic("zcnet_nic_tx_packets_total", "Good packets the NIC transmitted.", func(n appliance.NICCounters) uint64 { return n.TxPackets })
	nic("zcnet_nic_rx_bytes_total", "Good octets the NIC received.", func(n appliance.NICCounters) uint64 { return n.RxBytes })
	nic("zcnet_nic_tx_bytes_total", "Good octets the NIC transmitted.", func(n appliance.NICCounters) uint64 { return n.TxBytes })
	nic("zcnet_nic_rx_missed_total", "Frames dropped because the NIC packet buffer was full.", func(n appliance.NICCounters) uint64 { return n.RxMissed })
	nic("zcnet_nic_rx_no_descriptor_total", "Frames dropped because an RX queue had no free descriptor.", func(n appliance.NICCounters) uint64 { return n.RxNoDescriptor })
	nic("zcnet_nic_rx_length_errors_total", "Undersize and oversize frames (RLEC; the same frames as the undersize and oversize discards).", func(n appliance.NICCounters) uint64 { return n.RxLengthErrors })
	m.family("zcnet_nic_rx_discarded_total", "counter", "Frames the NIC discarded before its packet buffer, by cause (filtered: simulated NIC only).")
	for _, n := range s.NICs {
		d := n.Discards()
		for _, k := range sortedKeys(d) {
			m.sample("zcnet_nic_rx_discarded_total", []string{"nic", n.Name, "cause", k}, float64(d[k]))
		}
	}

	port := func(name, help string, get func(appliance.PortCounters) uint64) {
		m.family(name, "counter", help)
		for _, p := range s.Ports {
			m.sample(name, []string{"port", p.Name}, float64(get(p)))
		}
	}
	port("zcnet_port_rx_packets_total", "Frames delivered from the wire to the guest.", func(p appliance.PortCounters) uint64 { return p.RxPackets })
	port("zcnet_port_tx_packets_total", "Frames sent from the guest to the wire.", func(p appliance.PortCounters) uint64 { return p.TxPackets })
	port("zcnet_port_rx_bytes_total", "Bytes delivered from the wire to the guest.", func(p appliance.PortCounters) uint64 { return p.RxBytes })
	port("zcnet_port_tx_bytes_total", "Bytes sent from the guest to the wire.", func(p appliance.PortCounters) uint64 { return p.TxBytes })
	port("zcnet_port_guest_errors_total", "Broken guest descriptor chains.", func(p appliance.PortCounters) uint64 { return p.GuestErrors })
	port("zcnet_port_rx_rewound_total", "Empty guest receive buffers given back by rewinding the ring when the port stopped.", func(p appliance.PortCounters) uint64 { return p.RxRewound })
	port("zcnet_port_guest_memory_faults_total", "Accesses to guest memory that faulted because the front end truncated it; each dropped the guest's session.", func(p appliance.PortCounters) uint64 { return p.GuestMemoryFaults })
	port("zcnet_port_restarts_total", "Times the port stopped its NIC queues and took guest buffers back.", func(p appliance.PortCounters) uint64 { return p.Restarts })
	port("zcnet_port_mac_filter_errors_total", "Guest MACs the NIC's address filter refused.", func(p appliance.PortCounters) uint64 { return p.MACFilterErrors })
	m.family("zcnet_port_guest_mac_info", "gauge", "The guest MAC the NIC accepts for the port, and whether it was configured or learned.")
	for _, p := range s.Ports {
		if p.GuestMAC != "" {
			m.sample("zcnet_port_guest_mac_info", []string{"port", p.Name, "mac", p.GuestMAC, "source", p.GuestMACSource}, 1)
		}
	}

	m.family("zcnet_port_frames_total", "counter", "Frames moved, by direction and by whether they were copied.")
	for _, p := range s.Ports {
		m.sample("zcnet_port_frames_total", []string{"port", p.Name, "dir", "rx", "path", "zero_copy"}, float64(p.ZeroCopy.Rx))
		m.sample("zcnet_port_frames_total", []string{"port", p.Name, "dir", "tx", "path", "zero_copy"}, float64(p.ZeroCopy.Tx))
		m.sample("zcnet_port_frames_total", []string{"port", p.Name, "dir", "rx", "path", "copied"}, float64(p.Copied.Rx))
		m.sample("zcnet_port_frames_total", []string{"port", p.Name, "dir", "tx", "path", "copied"}, float64(p.Copied.Tx))
	}
	keyed := func(name, help, label string, get func(appliance.PortCounters) map[string]uint64) {
		m.family(name, "counter", help)
		for _, p := range s.Ports {
			kv := get(p)
			for _, k := range sortedKeys(kv) {
				m.sample(name, []string{"port", p.Name, label, k}, float64(kv[k]))
			}
		}
	}
	keyed("zcnet_port_copies_total", "Frames copied through host buffers, by reason.", "reason", func(p appliance.PortCounters) map[string]uint64 { return p.CopyReasons })
	keyed("zcnet_port_drops_total", "Frames dropped by the engine, by cause.", "cause", func(p appliance.PortCounters) map[string]uint64 { return p.Drops })

	lc := func(name, kind, help string, get func(appliance.LcoreCounters) float64) {
		m.family(name, kind, help)
		for _, l := range s.Lcores {
			m.sample(name, []string{"lcore", strconv.Itoa(l.Lcore), "cpu", strconv.Itoa(l.CPU)}, get(l))
		}
	}
	lc("zcnet_lcore_busy_seconds_total", "counter", "Time an lcore spent in rounds that moved packets.", func(l appliance.LcoreCounters) float64 { return l.BusySeconds })
	lc("zcnet_lcore_idle_seconds_total", "counter", "Time an lcore spent in rounds that found nothing.", func(l appliance.LcoreCounters) float64 { return l.IdleSeconds })

	if t := s.Traffic; t != nil {
		m.family("zcnet_sim_generator_sent_total", "counter", "Frames the simulated traffic generator sent.")
		m.sample("zcnet_sim_generator_sent_total", nil, float64(t.GeneratorSent))
		m.family("zcnet_sim_sink_received_total", "counter", "Generator probes the verifying sink received intact.")
		m.sample("zcnet_sim_sink_received_total", nil, float64(t.SinkReceived))
		m.family("zcnet_sim_sink_lost", "gauge", "Probe sequence numbers the sink has not seen.")
		m.sample("zcnet_sim_sink_lost", nil, float64(t.SinkLost))
		m.family("zcnet_sim_tap_frames_total", "counter", "Frames through the TAP, by direction (from or to the kernel) and what became of them.")
		for _, v := range []struct {
			dir, what string
			n         uint64
		}{{"from_kernel", "delivered", t.TAPFromKernel}, {"from_kernel", "padded", t.TAPPadded}, {"from_kernel", "read_error", t.TAPReadErrors},
			{"to_kernel", "delivered", t.TAPToKernel}, {"to_kernel", "refused", t.TAPWriteErrors}} {
			m.sample("zcnet_sim_tap_frames_total", []string{"dir", v.dir, "result", v.what}, float64(v.n))
		}
		m.family("zcnet_sim_iommu_faults_total", "counter", "Device accesses outside every IOMMU mapping.")
		m.sample("zcnet_sim_iommu_faults_total", nil, float64(t.IOMMUFaults))
	}
}

func sortedKeys(m map[string]uint64) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

type metricWriter struct{ w *bufio.Writer }

func (m *metricWriter) family(name, kind, help string) {
	fmt.Fprintf(m.w, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, kind)
}

// sample writes name{k="v",...} value; labels alternate keys and values.
func (m *metricWriter) sample(name string, labels []string, v float64) {
	m.w.WriteString(name)
	for i := 0; i+1 < len(labels); i += 2 {
		if i == 0 {
			m.w.WriteByte('{')
		} else {
			m.w.WriteByte(',')
		}
		m.w.WriteString(labels[i])
		m.w.WriteString(`="`)
		m.w.WriteString(escapeLabel(labels[i+1]))
		m.w.WriteByte('"')
	}
	if len(labels) > 0 {
		m.w.WriteByte('}')
	}
	m.w.WriteByte(' ')
	m.w.WriteString(strconv.FormatFloat(v, 'g', -1, 64))
	m.w.WriteByte('\n')
}

// escapeLabel escapes a label value as the exposition format requires:
// backslash, double quote and newline.
func escapeLabel(s string) string {
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case '\\':
			out = append(out, '\\', '\\')
		case '"':
			out = append(out, '\\', '"')
		case '\n':
			out = append(out, '\\', 'n')
		default:
			out = append(out, c)
		}
	}
	return string(out)
}
