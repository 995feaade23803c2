package main

import (
	"io"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.uber.org/zap"

	"github.com/zcnet/zcnet/appliance"
)

// parseMetrics parses a text-format scrape, failing the test if it does
// not parse.
func parseMetrics(t *testing.T, body string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.LegacyValidation)
	fams, err := p.TextToMetricFamilies(strings.NewReader(body))
	if err != nil {
		t.Fatalf("/metrics does not parse: %v\n%s", err, body)
	}
	return fams
}

// sampleValue is the value of the sample of fams' family name whose labels
// are exactly labels (name, value, name, value...), and whether there is one.
func sampleValue(fams map[string]*dto.MetricFamily, name string, labels ...string) (float64, bool) {
	f := fams[name]
	if f == nil {
		return 0, false
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		for _, l := range m.GetLabel() {
			if v, ok := want[l.GetName()]; !ok || v != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.GetCounter() != nil:
			return m.GetCounter().GetValue(), true
		case m.GetGauge() != nil:
			return m.GetGauge().GetValue(), true
		case m.GetUntyped() != nil:
			return m.GetUntyped().GetValue(), true
		}
	}
	return 0, false
}

func get(t *testing.T, url, accept string) (string, http.Header) {
	t.Helper()
	req, err := http.NewRequest("GET", url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %s\n%s", url, resp.Status, body)
	}
	return string(body), resp.Header
}

// A port name holds the guest's vhost-user socket path, which may hold
// any byte but NUL.
const oddPort = "0000:03:00.0/0<->/run/vm \"one\"\\two\nthree.sock/0"

func metricsSnapshot() appliance.Snapshot {
	filtered := uint64(7)
	return appliance.Snapshot{
		Command: "sim", PID: 1, UptimeSeconds: 12.5,
		NICs: []appliance.NICCounters{{Name: "0000:03:00.0", RxPackets: 10, TxPackets: 11, RxBytes: 12, TxBytes: 13,
			RxMissed: 1, RxNoDescriptor: 2, RxUndersize: 3, RxOversize: 4, RxLengthErrors: 7, RxFiltered: &filtered}},
		Ports: []appliance.PortCounters{
			{Name: oddPort, RxPackets: 100, TxPackets: 101, RxBytes: 102, TxBytes: 103,
				ZeroCopy: appliance.Dirs{Rx: 90, Tx: 91}, Copied: appliance.Dirs{Rx: 10, Tx: 9},
				CopyReasons: map[string]uint64{"small": 19}, Drops: map[string]uint64{"rx_too_big": 5, "no_buffer": 6},
				GuestMAC: "52:54:00:12:34:56", GuestMACSource: "learned"},
			{Name: "0000:03:00.0/1<->/run/vm\xff.sock/0", RxPackets: 200},
		},
		Lcores:  []appliance.LcoreCounters{{Lcore: 0, CPU: 3, BusySeconds: 1.25, IdleSeconds: 2.5}},
		Traffic: &appliance.TrafficCounters{GeneratorSent: 1000, SinkReceived: 990, SinkLost: 10, TAPPadded: 4, IOMMUFaults: 0},
	}
}

// TestMetricsExposition scrapes the /metrics handler and parses it with
// the Prometheus text parser: every family has its name, type and help,
// a port label holding a quote, a backslash and a newline comes back
// intact, one with bytes that are not UTF-8 is still served (with U+FFFD
// for them), and OpenMetrics is served to a scraper asking for it.
func TestMetricsExposition(t *testing.T) {
	snap := metricsSnapshot()
	srv := httptest.NewServer(newMetricsHandler(zap.NewNop(), func() appliance.Snapshot { return snap }))
	defer srv.Close()

	body, h := get(t, srv.URL, "")
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	fams := parseMetrics(t, body)

	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"zcnet_uptime_seconds", nil, 12.5},
		{"zcnet_nic_rx_packets_total", []string{"nic", "0000:03:00.0"}, 10},
		{"zcnet_nic_rx_length_errors_total", []string{"nic", "0000:03:00.0"}, 7},
		{"zcnet_nic_rx_discarded_total", []string{"nic", "0000:03:00.0", "cause", "filtered"}, 7},
		{"zcnet_nic_rx_discarded_total", []string{"nic", "0000:03:00.0", "cause", "crc_error"}, 0},
		{"zcnet_port_rx_packets_total", []string{"port", oddPort}, 100},
		{"zcnet_port_tx_bytes_total", []string{"port", oddPort}, 103},
		{"zcnet_port_rx_packets_total", []string{"port", "0000:03:00.0/1<->/run/vm\uFFFD.sock/0"}, 200},
		{"zcnet_port_guest_mac_info", []string{"port", oddPort, "mac", "52:54:00:12:34:56", "source", "learned"}, 1},
		{"zcnet_port_frames_total", []string{"port", oddPort, "dir", "tx", "path", "zero_copy"}, 91},
		{"zcnet_port_frames_total", []string{"port", oddPort, "dir", "rx", "path", "copied"}, 10},
		{"zcnet_port_copies_total", []string{"port", oddPort, "reason", "small"}, 19},
		{"zcnet_port_drops_total", []string{"port", oddPort, "cause", "no_buffer"}, 6},
		{"zcnet_lcore_busy_seconds_total", []string{"lcore", "0", "cpu", "3"}, 1.25},
		{"zcnet_lcore_idle_seconds_total", []string{"lcore", "0", "cpu", "3"}, 2.5},
		{"zcnet_sim_generator_sent_total", nil, 1000},
		{"zcnet_sim_sink_lost", nil, 10},
		{"zcnet_sim_tap_frames_total", []string{"dir", "from_kernel", "result", "padded"}, 4},
		{"zcnet_sim_iommu_faults_total", nil, 0},
	} {
		if v, ok := sampleValue(fams, c.name, c.labels...); !ok || v != c.want {
			t.Errorf("%s%q = %v (present %v), want %v", c.name, c.labels, v, ok, c.want)
		}
	}
	if _, ok := sampleValue(fams, "zcnet_port_guest_mac_info", "port", "0000:03:00.0/1<->/run/vm\uFFFD.sock/0", "mac", "", "source", ""); ok {
		t.Error("zcnet_port_guest_mac_info for a port without a guest MAC")
	}

	types := map[string]dto.MetricType{"zcnet_uptime_seconds": dto.MetricType_GAUGE,
		"zcnet_port_guest_mac_info": dto.MetricType_GAUGE, "zcnet_sim_sink_lost": dto.MetricType_GAUGE,
		"zcnet_port_rx_pending": dto.MetricType_GAUGE}
	helps := map[string]string{
		"zcnet_nic_rx_discarded_total": "Frames the NIC discarded before its packet buffer, by cause (filtered: simulated NIC only).",
		"zcnet_port_drops_total":       "Frames dropped by the engine, by cause.",
	}
	n := 0
	for name, f := range fams {
		if !strings.HasPrefix(name, "zcnet_") {
			continue
		}
		n++
		want, ok := types[name]
		if !ok {
			want = dto.MetricType_COUNTER
		}
		if f.GetType() != want {
			t.Errorf("%s is a %v, want %v", name, f.GetType(), want)
		}
		if f.GetHelp() == "" || (helps[name] != "" && f.GetHelp() != helps[name]) {
			t.Errorf("%s help %q", name, f.GetHelp())
		}
	}
	if n != 33 {
		t.Errorf("%d zcnet families, want 33", n)
	}
	// The runtime and process collectors are there for operators.
	for _, name := range []string{"go_goroutines", "go_memstats_heap_inuse_bytes", "process_resident_memory_bytes", "process_open_fds"} {
		if fams[name] == nil {
			t.Errorf("/metrics lacks %s", name)
		}
	}

	// Without a simulated wire there are no zcnet_sim_ families.
	snap.Traffic = nil
	for name := range parseMetrics(t, func() string { b, _ := get(t, srv.URL, ""); return b }()) {
		if strings.HasPrefix(name, "zcnet_sim_") {
			t.Errorf("%s without a simulated wire", name)
		}
	}

	// Two ports of one name: the scrape reports the duplicate and still
	// serves the rest.
	snap.Ports = append(snap.Ports, snap.Ports[0])
	fams = parseMetrics(t, func() string { b, _ := get(t, srv.URL, ""); return b }())
	if _, ok := sampleValue(fams, "zcnet_uptime_seconds"); !ok {
		t.Error("a duplicate port took the scrape down")
	}

	body, h = get(t, srv.URL, "application/openmetrics-text; version=1.0.0; charset=utf-8")
	if ct := h.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text; version=1.0.0") {
		t.Errorf("OpenMetrics Content-Type %q", ct)
	}
	for _, want := range []string{"# TYPE zcnet_port_rx_packets counter\n", "\n# EOF\n"} {
		if !strings.Contains(body, want) {
			t.Errorf("OpenMetrics lacks %q:\n%s", want, body)
		}
	}
}

// TestMetricsLint: the snapshot collector's metrics follow the Prometheus
// naming conventions (promlint).
func TestMetricsLint(t *testing.T) {
	snap := metricsSnapshot()
	problems, err := testutil.CollectAndLint(snapshotCollector{snap: func() appliance.Snapshot { return snap }})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range problems {
		t.Errorf("%s: %s", p.Metric, p.Text)
	}
}

// TestMetricsOddSocketPath: a guest socket path with a quote, a backslash
// and a newline, served by zcnet run, comes back intact as the port label
// of a scrape of its /metrics.
func TestMetricsOddSocketPath(t *testing.T) {
	useSimDevices(t)
	dir := t.TempDir()
	sock, tel := filepath.Join(dir, "vm \"1\"\\a\nb.sock"), filepath.Join(dir, "tel.sock")
	addr := freeAddr(t)
	stop := startRun("--pci", "0000:03:00.0", "--vhost", sock, "--telemetry", tel, "--metrics-addr", addr)
	waitSocket(t, sock)
	s := waitTelemetry(t, tel)
	if len(s.Ports) == 0 || !strings.Contains(s.Ports[0].Name, sock) {
		t.Fatalf("snapshot ports %+v, want one named after %q", s.Ports, sock)
	}
	body, _ := get(t, "http://"+addr+"/metrics", "")
	fams := parseMetrics(t, body)
	if _, ok := sampleValue(fams, "zcnet_port_rx_packets_total", "port", s.Ports[0].Name); !ok {
		t.Errorf("no zcnet_port_rx_packets_total{port=%q} in /metrics:\n%s", s.Ports[0].Name, body)
	}
	if out, err := stop(); err != nil {
		t.Fatalf("zcnet run: %v\n%s", err, out)
	}
}
