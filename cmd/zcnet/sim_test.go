package main

import (
	"encoding/json"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/appliance"
)

// simJSON runs `zcnet sim` with args and decodes its --json summary.
func simJSON(t *testing.T, args ...string) appliance.Snapshot {
	t.Helper()
	args = append([]string{"sim", "--json", "--stats-period", "0", "--telemetry", ""}, args...)
	out, err := execute(args...)
	if err != nil {
		t.Fatalf("zcnet %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var s appliance.Snapshot
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &s); err != nil {
		t.Fatalf("summary is not JSON: %v\n%s", err, out)
	}
	return s
}

// TestSimEchoesThroughTheGuest runs the whole data path at a rate the
// simulator sustains under the race detector: every generated frame must
// travel wire -> NIC -> guest -> NIC -> wire and reach the sink intact,
// zero-copy in both directions unless --copy forces the copy path.
func TestSimEchoesThroughTheGuest(t *testing.T) {
	for _, copyPath := range []bool{false, true} {
		args := []string{"--duration", "700ms", "--rate", "3000", "--frame-size", "128", "--flows", "4"}
		if copyPath {
			args = append(args, "--copy")
		}
		s := simJSON(t, args...)
		tr := s.Traffic
		if tr == nil || tr.GeneratorSent < 1000 {
			t.Fatalf("copy=%v: generator barely ran: %+v", copyPath, tr)
		}
		if tr.SinkReceived != tr.GeneratorSent || tr.SinkBad != 0 || tr.IOMMUFaults != 0 {
			t.Errorf("copy=%v: sent %d, sink got %d intact (bad %d), IOMMU faults %d", copyPath,
				tr.GeneratorSent, tr.SinkReceived, tr.SinkBad, tr.IOMMUFaults)
		}
		tot := s.Totals()
		if tot.GuestRx != tr.GeneratorSent || tot.GuestTx != tr.GeneratorSent || tot.NICRx != tr.GeneratorSent {
			t.Errorf("copy=%v: NIC rx %d, guest rx %d tx %d, want %d each", copyPath, tot.NICRx, tot.GuestRx, tot.GuestTx, tr.GeneratorSent)
		}
		moved, other := tot.ZeroCopy, tot.Copied
		if copyPath {
			moved, other = other, moved
			if s.Ports[0].CopyReasons["forced"] == 0 {
				t.Errorf("copies not counted as forced: %+v", s.Ports[0].CopyReasons)
			}
		}
		if moved != 2*tr.GeneratorSent || other != 0 {
			t.Errorf("copy=%v: zero-copy %d, copied %d for %d frames each way", copyPath, tot.ZeroCopy, tot.Copied, tr.GeneratorSent)
		}
		if len(s.Lcores) != 1 || s.Lcores[0].BusyRounds == 0 {
			t.Errorf("lcore counters did not move: %+v", s.Lcores)
		}
	}
}

func TestSimStatisticsLines(t *testing.T) {
	out, err := execute("sim", "--duration", "1250ms", "--rate", "2000", "--stats-period", "500ms", "--telemetry", "")
	if err != nil {
		t.Fatalf("sim: %v\n%s", err, out)
	}
	if n := strings.Count(out, "| lcore busy"); n != 2 {
		t.Errorf("want 2 statistics lines, got %d:\n%s", n, out)
	}
	if !strings.Contains(out, "lost 0, bad checksums 0") {
		t.Errorf("summary reports loss:\n%s", out)
	}
}

func TestSimFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rate", "0"}, "--rate"},
		{[]string{"--frame-size", "40"}, "--frame-size"},
		{[]string{"--frame-size", "9000"}, "--frame-size"},
		{[]string{"--flows", "0"}, "--flows"},
		{[]string{"--rxd", "100"}, "--rxd"},
		{[]string{"-l", "1000"}, "CPU"},
		{[]string{"-l", "0-1"}, "at most 1"},
		{[]string{"--guest-mac", "33:33:00:00:00:01"}, "multicast"},
		{[]string{"--guest-mac", "00:00:00:00:00:00"}, "all zero"},
		{[]string{"--guest-mac", "52:54:00:12:34:56:78:9a"}, "6 bytes"},
	} {
		args := append([]string{"sim", "--duration", "10ms", "--telemetry", ""}, c.args...)
		if _, err := execute(args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("zcnet %s: err = %v, want it to mention %q", strings.Join(args, " "), err, c.want)
		}
	}
}

// TestSimExternalGuestSummary: with --vhost the guest is someone else's;
// the summary must not report the built-in guest's (zero) echo counts.
func TestSimExternalGuestSummary(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "vm.sock")
	out, err := execute("sim", "--vhost", sock, "--duration", "300ms", "--rate", "1000", "--stats-period", "0", "--telemetry", "")
	if err != nil {
		t.Fatalf("sim --vhost: %v\n%s", err, out)
	}
	if strings.Contains(out, "guest: echoed") || !strings.Contains(out, "IOMMU faults 0") {
		t.Errorf("summary with an external guest:\n%s", out)
	}
	out, err = execute("sim", "--duration", "300ms", "--rate", "1000", "--stats-period", "0", "--telemetry", "")
	if err != nil || !strings.Contains(out, "guest: echoed") {
		t.Errorf("summary with the built-in guest lacks its line (err %v):\n%s", err, out)
	}
}
