package main

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/appliance"
)

// freeAddr returns a loopback TCP address nothing listens on right now.
func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// startSim runs `zcnet sim` in the background until the test ends.
func startSim(t *testing.T, args ...string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	cmd := newRootCommandWith(testOpener)
	cmd.SetArgs(append([]string{"sim", "--stats-period", "0", "--rate", "3000"}, args...))
	cmd.SetOut(io.Discard)
	go func() { done <- cmd.ExecuteContext(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("zcnet sim: %v", err)
		}
	})
}

// waitTelemetry polls the socket until the instance answers.
func waitTelemetry(t *testing.T, path string) appliance.Snapshot {
	t.Helper()
	var err error
	for range 300 {
		var s appliance.Snapshot
		if s, err = readTelemetry(path); err == nil {
			return s
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("telemetry socket never answered: %v", err)
	return appliance.Snapshot{}
}

var metricLine = regexp.MustCompile(`(?m)^zcnet_port_rx_packets_total\{port="[^"]+"\} (\d+)$`)

func scrape(t *testing.T, addr string) (string, uint64) {
	t.Helper()
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	parseMetrics(t, string(body))
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain; version=0.0.4") {
		t.Errorf("Content-Type %q", ct)
	}
	m := metricLine.FindSubmatch(body)
	if m == nil {
		t.Fatalf("no zcnet_port_rx_packets_total sample in /metrics:\n%s", body)
	}
	n, _ := strconv.ParseUint(string(m[1]), 10, 64)
	return string(body), n
}

// TestTelemetryAndMetrics starts a sim instance in-process and checks that
// the telemetry socket, `zcnet stats` and /metrics report counters that
// move while traffic flows.
func TestTelemetryAndMetrics(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "telemetry.sock")
	addr := freeAddr(t)
	startSim(t, "--telemetry", sock, "--metrics-addr", addr)

	waitTelemetry(t, sock)
	// The scrape comes before the first snapshot, so counters that move
	// after that snapshot have moved after the scrape too.
	_, m1 := scrape(t, addr)
	first, err := readTelemetry(sock)
	if err != nil {
		t.Fatal(err)
	}
	if first.Command != "sim" || len(first.NICs) != 1 || len(first.Ports) != 1 || len(first.Lcores) != 1 || first.Traffic == nil {
		t.Fatalf("snapshot lacks parts: %+v", first)
	}
	// Every counter must move while traffic flows: wait for it (a fixed
	// pause would fail on a machine too loaded to move traffic in time).
	var second appliance.Snapshot
	var a, b appliance.Totals
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		var err error
		if second, err = readTelemetry(sock); err != nil {
			t.Fatal(err)
		}
		a, b = first.Totals(), second.Totals()
		if b.NICRx > a.NICRx && b.GuestRx > a.GuestRx && b.GuestTx > a.GuestTx && b.ZeroCopy > a.ZeroCopy &&
			second.Traffic.GeneratorSent > first.Traffic.GeneratorSent && second.UptimeSeconds > first.UptimeSeconds {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("counters did not move in 10 s:\n first %+v\nsecond %+v", a, b)
		}
	}
	body, m2 := scrape(t, addr)
	if m2 <= m1 {
		t.Errorf("zcnet_port_rx_packets_total did not move: %d then %d", m1, m2)
	}
	for _, want := range []string{
		// client_golang writes a sample's labels in name order.
		"# TYPE zcnet_port_drops_total counter",
		`zcnet_port_drops_total{cause="rx_too_big",port="`,
		`zcnet_port_frames_total{dir="rx",path="zero_copy",port="`,
		"zcnet_nic_rx_missed_total{nic=",
		"zcnet_sim_generator_sent_total ",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	if !regexp.MustCompile(`(?m)^zcnet_lcore_busy_seconds_total\{cpu="\d+",lcore="0"\} `).MatchString(body) {
		t.Errorf("/metrics lacks zcnet_lcore_busy_seconds_total{cpu=...,lcore=\"0\"}")
	}

	out, err := execute("stats", "--socket", sock)
	if err != nil {
		t.Fatalf("stats: %v", err)
	}
	for _, want := range []string{"zcnet sim, pid", "rx packets", "zero-copy rx", "busy %", "simulated wire: generator sent"} {
		if !strings.Contains(out, want) {
			t.Errorf("stats table lacks %q:\n%s", want, out)
		}
	}
	out, err = execute("stats", "--socket", sock, "--json")
	if err != nil {
		t.Fatalf("stats --json: %v", err)
	}
	var s appliance.Snapshot
	if err := json.NewDecoder(bytes.NewReader([]byte(out))).Decode(&s); err != nil {
		t.Fatalf("stats --json: %v\n%s", err, out)
	}
	if s.Totals().GuestRx < b.GuestRx {
		t.Errorf("stats --json went backwards: %+v after %+v", s.Totals(), b)
	}
}

func TestStatsWithoutInstance(t *testing.T) {
	_, err := execute("stats", "--socket", filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "no zcnet instance") {
		t.Errorf("err = %v", err)
	}
}

func TestTelemetrySocketInUse(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "telemetry.sock")
	startSim(t, "--telemetry", sock)
	waitTelemetry(t, sock)
	_, err := execute("sim", "--duration", "10ms", "--telemetry", sock)
	if err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second instance on one socket: err = %v", err)
	}
}

// TestTelemetryCheckedBeforeStart: a second zcnet run given a telemetry
// socket or metrics address in use fails before it opens a NIC or a
// vhost-user socket; a stale socket file left by a killed instance is
// replaced.
func TestTelemetryCheckedBeforeStart(t *testing.T) {
	f := useSimDevices(t)
	dir := t.TempDir()
	tel, addr := filepath.Join(dir, "tel.sock"), freeAddr(t)
	stop := startRun("--pci", "0000:03:00.0", "--vhost", filepath.Join(dir, "vm1.sock"), "--telemetry", tel, "--metrics-addr", addr)
	waitTelemetry(t, tel)
	second := filepath.Join(dir, "vm2.sock")
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--telemetry", tel}, "in use"},
		{[]string{"--telemetry", filepath.Join(dir, "other.sock"), "--metrics-addr", addr}, "--metrics-addr"},
	} {
		args := append([]string{"run", "--duration", "10ms", "--pci", "0000:04:00.0", "--vhost", second}, c.args...)
		if _, err := execute(args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("zcnet %s: err = %v, want it to mention %q", strings.Join(args, " "), err, c.want)
		}
		if pf, _ := f.pf("0000:04:00.0"); pf != nil {
			t.Errorf("zcnet %s opened its NIC before it checked the telemetry", strings.Join(args, " "))
		}
		if _, err := os.Stat(second); err == nil {
			t.Errorf("zcnet %s created its vhost-user socket before it checked the telemetry", strings.Join(args, " "))
		}
	}
	if _, err := stop(); err != nil {
		t.Fatal(err)
	}

	// A killed instance leaves its socket file behind, with nobody
	// listening: the next one takes the path over.
	stale := filepath.Join(dir, "stale.sock")
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: stale, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	l.SetUnlinkOnClose(false)
	l.Close()
	if _, err := os.Stat(stale); err != nil {
		t.Fatalf("the stale socket file is gone already: %v", err)
	}
	startSim(t, "--telemetry", stale)
	if s := waitTelemetry(t, stale); s.Command != "sim" {
		t.Errorf("the instance on the stale path answers as %q", s.Command)
	}
}
