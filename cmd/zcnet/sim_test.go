package main

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/sim/rig"
)

// simJSON runs `zcnet sim` with args and decodes its --json summary.
func simJSON(t *testing.T, args ...string) appliance.Snapshot {
	t.Helper()
	return runJSON[appliance.Snapshot](t, append([]string{"sim", "--json", "--stats-period", "0", "--telemetry", ""}, args...)...)
}

// runJSON runs zcnet with args and decodes the JSON its output ends with.
func runJSON[T any](t *testing.T, args ...string) T {
	t.Helper()
	v, _ := runJSONOut[T](t, args...)
	return v
}

// runJSONOut is runJSON that also returns the whole output (with what
// the command wrote to stderr before its JSON).
func runJSONOut[T any](t *testing.T, args ...string) (T, string) {
	t.Helper()
	out, err := execute(args...)
	if err != nil {
		t.Fatalf("zcnet %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var v T
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &v); err != nil {
		t.Fatalf("output is not JSON: %v\n%s", err, out)
	}
	return v, out
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
	// The poll core's line counts the frames moved both ways: the guest
	// rx and tx of the summary's first line.
	var rx, tx, moved uint64
	first := regexp.MustCompile(`guest rx (\d+) tx (\d+)`).FindStringSubmatch(out)
	poll := regexp.MustCompile(`(?m)^poll core: [0-9.]+ Mpps through the guest, lcore busy \d+%, [0-9.]+ ns per frame moved \(busy [0-9.]+s over (\d+) frames, both directions\)$`).FindStringSubmatch(out)
	if first == nil || poll == nil {
		t.Fatalf("summary lacks the guest counters or the poll core line:\n%s", out)
	}
	fmt.Sscan(first[1], &rx)
	fmt.Sscan(first[2], &tx)
	fmt.Sscan(poll[1], &moved)
	if moved == 0 || moved != rx+tx {
		t.Errorf("poll core moved %d frames, guest rx %d + tx %d", moved, rx, tx)
	}
	if !regexp.MustCompile(`latency p50 \d+us p99 \d+us p99\.9 \d+us max \d+us`).MatchString(out) {
		t.Errorf("wire line lacks the latency tail:\n%s", out)
	}
}

// TestSimPollCoreFigures: the poll core's figures in --json agree with
// the counters: Mpps over the seconds the generator sent is the frames
// the guest sent back, ns per frame is the busy time over the frames
// moved both ways. A numeric --rate (here in exponent form, as a float
// flag took it) runs the generator at that rate, with no ramp.
func TestSimPollCoreFigures(t *testing.T) {
	const rate, dur = 2500.0, 700 * time.Millisecond
	s := simGuestsJSON(t, "--rate", "2.5e3", "--duration", dur.String(), "--frame-size", "128")
	tr, p := s.Traffic, s.PollCore
	if tr == nil || p == nil {
		t.Fatalf("no traffic or poll core figures: %+v %+v", tr, p)
	}
	if s.AutoRate != nil {
		t.Errorf("a numeric --rate ran a ramp: %+v", s.AutoRate)
	}
	if p.Seconds < dur.Seconds() || p.Seconds > dur.Seconds()+0.25 {
		t.Errorf("generator sent for %.3fs, want about %s", p.Seconds, dur)
	}
	// The floor is low: on a loaded machine the generator falls behind.
	if sent := float64(tr.GeneratorSent); sent < 0.5*rate*p.Seconds || sent > 1.1*rate*p.Seconds {
		t.Errorf("generator sent %d in %.3fs at --rate %g", tr.GeneratorSent, p.Seconds, rate)
	}
	tot := s.Totals()
	if tr.SinkReceived != tr.GeneratorSent || tot.GuestTx != tr.GeneratorSent {
		t.Errorf("sent %d, guest echoed %d, sink got %d", tr.GeneratorSent, tot.GuestTx, tr.SinkReceived)
	}
	if got := p.MppsThroughGuest * 1e6 * p.Seconds; math.Abs(got-float64(tot.GuestTx)) > 1e-6*float64(tot.GuestTx) {
		t.Errorf("%g Mpps over %.3fs is %.1f frames, the guest sent %d", p.MppsThroughGuest, p.Seconds, got, tot.GuestTx)
	}
	if p.PMDPackets != tot.GuestRx+tot.GuestTx || p.PMDPackets != 2*tr.GeneratorSent {
		t.Errorf("poll core moved %d frames: guest rx %d tx %d, generator %d", p.PMDPackets, tot.GuestRx, tot.GuestTx, tr.GeneratorSent)
	}
	if p.PMDBusySeconds <= 0 || math.Abs(p.NsPerPacket-p.PMDBusySeconds*1e9/float64(p.PMDPackets)) > 1e-6*p.NsPerPacket {
		t.Errorf("%.1f ns per frame, busy %gs over %d frames", p.NsPerPacket, p.PMDBusySeconds, p.PMDPackets)
	}
	if p.LcoreBusyPct <= 0 || p.LcoreBusyPct > 100 {
		t.Errorf("lcore busy %g%%", p.LcoreBusyPct)
	}
	// Percentiles are within 1/16 of the value (the sink's histogram),
	// the maximum exact.
	if !(tr.LatencyP50Us > 0 && tr.LatencyP99Us >= tr.LatencyP50Us && tr.LatencyP999Us >= tr.LatencyP99Us && tr.LatencyMaxUs*17/16 >= tr.LatencyP999Us) {
		t.Errorf("latency p50 %g p99 %g p99.9 %g max %g us", tr.LatencyP50Us, tr.LatencyP99Us, tr.LatencyP999Us, tr.LatencyMaxUs)
	}
}

// TestSimAutoRate: --rate auto ramps in a throwaway appliance (trials
// of 1000, 2000 and 4000 pps, then 8000 is above --max-rate), then runs
// a new one at --auto-fraction of the highest loss-free rate. The run's
// counters and uptime are its own: the ramp's frames (1050 with those
// three trials) and time (0.9 s and more) are not in them. Nothing is
// lost at these rates, even under -race; on a machine loaded enough to
// lose frames in a trial the ramp bisects below 4000, still above the
// start rate.
func TestSimAutoRate(t *testing.T) {
	const dur, trial = 700 * time.Millisecond, 300 * time.Millisecond
	s, out := runJSONOut[simSummaryJSON](t, "sim", "--json", "--stats-period", "0", "--telemetry", "", "--rate", "auto", "--start-rate", "1000", "--max-rate", "4000",
		"--trial", trial.String(), "--auto-fraction", "0.75", "--duration", dur.String(), "--frame-size", "128")
	a, tr, p := s.AutoRate, s.Traffic, s.PollCore
	if a == nil || tr == nil || p == nil {
		t.Fatalf("no ramp, traffic or poll core figures: %+v %+v %+v\n%s", a, tr, p, out)
	}
	if a.LossFreePps <= 1000 || a.LossFreePps > 4000 || a.Trials < 3 || a.Fraction != 0.75 || a.OfferedPps != 0.75*a.LossFreePps || a.TrialSeconds != trial.Seconds() {
		t.Errorf("ramp %+v: want at least 3 trials, a loss-free rate above --start-rate 1000 and at most --max-rate 4000, the run at 0.75 of it\n%s", *a, out)
	}
	summary := fmt.Sprintf("rate auto: highest loss-free rate %.0f pps (%d trials of 300ms); running at 0.75 of it: %.0f pps", a.LossFreePps, a.Trials, a.OfferedPps)
	for _, want := range []string{"rate auto: trial 1000 pps", "rate auto: trial 4000 pps", summary} {
		if !strings.Contains(out, want) {
			t.Errorf("progress lacks %q:\n%s", want, out)
		}
	}
	if tr.GeneratorSent < 500 || float64(tr.GeneratorSent) > 1.1*a.OfferedPps*p.Seconds {
		t.Errorf("generator sent %d in %.3fs at %g pps: not the run's rate alone", tr.GeneratorSent, p.Seconds, a.OfferedPps)
	}
	if s.UptimeSeconds > dur.Seconds()+0.6 {
		t.Errorf("uptime %.3fs for a %s run: the ramp's time is in it", s.UptimeSeconds, dur)
	}
	if tr.SinkReceived != tr.GeneratorSent || tr.SinkLost != 0 || tr.SinkBad != 0 || tr.IOMMUFaults != 0 {
		t.Errorf("sent %d, sink got %d (lost %d, bad %d), IOMMU faults %d", tr.GeneratorSent, tr.SinkReceived, tr.SinkLost, tr.SinkBad, tr.IOMMUFaults)
	}
	if tot := s.Totals(); tot.GuestTx != tr.GeneratorSent || tot.ZeroCopy != 2*tr.GeneratorSent {
		t.Errorf("guest echoed %d, zero-copy %d, for %d frames", tot.GuestTx, tot.ZeroCopy, tr.GeneratorSent)
	}
}

func TestSimFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rate", "0"}, "--rate"},
		{[]string{"--rate", "fast"}, "--rate"},
		{[]string{"--rate", "auto", "--tap", "zc0"}, "--rate auto: the ramp drives the built-in traffic generator, which --tap replaces"},
		{[]string{"--rate", "auto", "--vhost", "/tmp/x.sock"}, "--rate auto: the ramp counts the frames the built-in guest echoes, and --vhost serves an external front end"},
		{[]string{"--rate", "auto", "--auto-fraction", "1.5"}, "--auto-fraction"},
		{[]string{"--rate", "auto", "--auto-fraction", "0"}, "--auto-fraction"},
		{[]string{"--rate", "auto", "--trial", "0s"}, "--trial"},
		{[]string{"--rate", "auto", "--start-rate", "10", "--max-rate", "5"}, "--start-rate"},
		{[]string{"--frame-size", "40"}, "--frame-size"},
		{[]string{"--frame-size", "9000"}, "--frame-size"},
		{[]string{"--flows", "0"}, "--flows"},
		{[]string{"--rxd", "100"}, "--rxd"},
		{[]string{"-l", "1000"}, "CPU"},
		{[]string{"-l", "0-1"}, "at most 1"},
		{[]string{"--guest-mac", "33:33:00:00:00:01"}, "multicast"},
		{[]string{"--guest-mac", "00:00:00:00:00:00"}, "all zero"},
		{[]string{"--guest-mac", "52:54:00:12:34:56:78:9a"}, "6 bytes"},
		{[]string{"--guests", "0"}, "--guests 0"},
		{[]string{"--guests", "65"}, "use 1 to 64"},
		{[]string{"--guests", "2", "--vhost", "/tmp/x.sock"}, "--vhost"},
		{[]string{"--guests", "2", "--guest-mac", "52:54:00:12:34:56"}, "--guest-mac"},
		{[]string{"--guests", "2", "--tap", "zc0"}, "--tap"},
		{[]string{"--vfs", "64"}, "use 1 to 63"},
		{[]string{"--vfs", "2", "--guests", "2"}, "--vfs 2"},
		{[]string{"--vfs", "2", "--broadcast-every", "3"}, "--vfs 2"},
		{[]string{"--broadcast-every", "-1"}, "--broadcast-every"},
		{[]string{"--broadcast-every", "2", "--tap", "zc0"}, "--broadcast-every"},
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

// simGuestsJSON runs `zcnet sim` with args and decodes its --json summary
// with the per-guest accounting.
func simGuestsJSON(t *testing.T, args ...string) simSummaryJSON {
	t.Helper()
	return runJSON[simSummaryJSON](t, append([]string{"sim", "--json", "--stats-period", "0", "--telemetry", ""}, args...)...)
}

// TestSimVFs: zcnet sim --vfs 3 puts three built-in guests each on its
// own VF of the simulated port (the PF kept by the simulated host's Linux
// driver, which assigns the VFs' MACs); the generator addresses each in
// turn, each receives exactly its share and nothing for another, every
// echo reaches the sink, zero-copy.
func TestSimVFs(t *testing.T) {
	const vfs = 3
	s := simGuestsJSON(t, "--vfs", "3", "--duration", "1s", "--rate", "3000", "--frame-size", "128")
	tr, x := s.Traffic, s.Sim
	if tr == nil || x == nil || tr.GeneratorSent < 1000 {
		t.Fatalf("no traffic or per-guest accounting: %+v %+v", tr, x)
	}
	if tr.SinkReceived != x.UnicastSent || x.UnicastLost != 0 || tr.SinkLost != 0 || tr.IOMMUFaults != 0 {
		t.Errorf("sent %d, sink got %d (lost %d, sink lost %d), IOMMU faults %d", x.UnicastSent, tr.SinkReceived, x.UnicastLost, tr.SinkLost, tr.IOMMUFaults)
	}
	if len(x.Guests) != vfs || len(s.NICs) != vfs {
		t.Fatalf("%d guests and %d NIC ports in the summary, want %d each", len(x.Guests), len(s.NICs), vfs)
	}
	for i, g := range x.Guests {
		if share := x.UnicastSent / vfs; g.Sent < share || g.Sent > share+1 {
			t.Errorf("guest %d was addressed %d of %d frames, want its share %d", i, g.Sent, x.UnicastSent, share)
		}
		if !g.Checked || g.Misdelivered != 0 || g.Received != g.Sent || g.Echoed != g.Received || g.Dropped != 0 {
			t.Errorf("guest %d (%s): %+v", i, g.MAC, g)
		}
		if n := s.NICs[i]; n.RxPackets != g.Received || n.VFResets == nil {
			t.Errorf("NIC port %s counted %d frames received (guest %d got %d), VF resets %v", n.Name, n.RxPackets, i, g.Received, n.VFResets)
		}
	}
	if tot := s.Totals(); tot.Copied != 0 || tot.ZeroCopy != tot.GuestRx+tot.GuestTx {
		t.Errorf("totals %+v: want every frame zero-copy", tot)
	}
}

// TestSimGuestsShareThePort: four built-in guests with their own MACs on
// one simulated port, the generator addressing each in turn and sending
// every fifth frame to the broadcast address. Every guest receives
// exactly the unicast frames addressed to it plus every broadcast, none
// for another guest (each checks the destination against its own MAC);
// the echoes of the unicast frames all reach the sink, zero-copy; the
// echoes of the broadcasts (their source the broadcast address) are
// dropped by the NIC as spoofed, one per guest and broadcast, and not
// counted as lost.
func TestSimGuestsShareThePort(t *testing.T) {
	const guests, every = 4, 5
	s := simGuestsJSON(t, "--guests", "4", "--broadcast-every", "5", "--duration", "1s", "--rate", "3000", "--frame-size", "128", "--flows", "4")
	tr, x := s.Traffic, s.Sim
	if tr == nil || x == nil || x.Broadcast == nil {
		t.Fatalf("no traffic, per-guest or broadcast accounting: %+v %+v", tr, x)
	}
	if tr.GeneratorSent < 1000 {
		t.Fatalf("generator barely ran: %+v", tr)
	}
	b := x.Broadcast
	if b.Sent != tr.GeneratorSent/every || x.UnicastSent != tr.GeneratorSent-b.Sent {
		t.Errorf("generator sent %d: %d broadcasts, %d unicast; want every %dth a broadcast", tr.GeneratorSent, b.Sent, x.UnicastSent, every)
	}
	if tr.SinkReceived != x.UnicastSent || x.UnicastLost != 0 || tr.SinkLost != 0 || tr.SinkBad != 0 || tr.IOMMUFaults != 0 {
		t.Errorf("unicast %d sent, sink got %d (lost %d, sink lost %d, bad %d), IOMMU faults %d",
			x.UnicastSent, tr.SinkReceived, x.UnicastLost, tr.SinkLost, tr.SinkBad, tr.IOMMUFaults)
	}
	if b.CopiesExpected != guests*b.Sent || b.CopiesReceived != b.CopiesExpected || b.EchoesSpoofed != b.CopiesExpected || b.EchoesOnWire != 0 {
		t.Errorf("broadcast accounting %+v: want a copy of each of %d broadcasts at each of %d guests, every echo dropped as spoofed", *b, b.Sent, guests)
	}
	if len(x.Guests) != guests {
		t.Fatalf("%d guests in the summary, want %d", len(x.Guests), guests)
	}
	macs := map[string]bool{}
	var addressed uint64
	for i, g := range x.Guests {
		macs[g.MAC] = true
		addressed += g.Sent
		// Round-robin: the shares differ by at most one frame.
		if share := x.UnicastSent / guests; g.Sent < share || g.Sent > share+1 {
			t.Errorf("guest %d was addressed %d of %d unicast frames, want its share %d", i, g.Sent, x.UnicastSent, share)
		}
		if !g.Checked || g.Misdelivered != 0 {
			t.Errorf("guest %d (%s): checked %v, misdelivered %d", i, g.MAC, g.Checked, g.Misdelivered)
		}
		if g.Received != g.Sent+b.Sent || g.Broadcasts != b.Sent || g.Echoed != g.Received || g.Dropped != 0 {
			t.Errorf("guest %d: addressed %d, received %d (broadcasts %d of %d), echoed %d, dropped %d",
				i, g.Sent, g.Received, g.Broadcasts, b.Sent, g.Echoed, g.Dropped)
		}
	}
	if len(macs) != guests || addressed != x.UnicastSent {
		t.Errorf("guest MACs %v, addressed %d of %d unicast frames", macs, addressed, x.UnicastSent)
	}
	tot := s.Totals()
	if tot.Copied != 0 || tot.ZeroCopy != tot.GuestRx+tot.GuestTx || tot.GuestRx != x.UnicastSent+b.CopiesReceived {
		t.Errorf("totals %+v: want every frame zero-copy, guest rx %d", tot, x.UnicastSent+b.CopiesReceived)
	}
	if s.NICs[0].TxSpoofed != b.EchoesSpoofed {
		t.Errorf("NIC tx_spoofed %d, summary %d", s.NICs[0].TxSpoofed, b.EchoesSpoofed)
	}
}

// TestSimGuestsText: the text summary has a row per guest with its
// misdelivered count, and with broadcasts the wire line separates them
// from the unicast frames the sink must get back.
func TestSimGuestsText(t *testing.T) {
	out, err := execute("sim", "--guests", "2", "--broadcast-every", "3", "--duration", "400ms", "--rate", "1500", "--stats-period", "0", "--telemetry", "")
	if err != nil {
		t.Fatalf("sim --guests 2: %v\n%s", err, out)
	}
	// The format, not the figures: TestSimGuestsShareThePort checks
	// those. Under -race on a loaded machine a guest may fall behind and
	// the NIC drop (and count) a few frames for want of its buffers.
	for _, want := range []string{"misdelivered", "52:54:00:00:00:01", "52:54:00:00:00:02", "of the unicast, lost ", "echoes dropped by the NIC as spoofed", "echoes on the wire 0", "IOMMU faults 0"} {
		if !strings.Contains(out, want) {
			t.Errorf("summary lacks %q:\n%s", want, out)
		}
	}
	// One guest, no broadcasts: today's summary, without the guest table
	// or a "sim" object in the JSON.
	out, err = execute("sim", "--duration", "200ms", "--rate", "1000", "--stats-period", "0", "--telemetry", "")
	if err != nil || strings.Contains(out, "misdelivered") || strings.Contains(out, "broadcast") {
		t.Errorf("one guest (err %v):\n%s", err, out)
	}
	if s := simGuestsJSON(t, "--duration", "200ms", "--rate", "1000"); s.Sim != nil {
		t.Errorf("one guest: JSON has per-guest accounting %+v", s.Sim)
	}
}

// TestSimMisdeliveredFails: a guest that received another guest's frame
// makes zcnet sim fail, naming it.
func TestSimMisdeliveredFails(t *testing.T) {
	x := &simExtra{Guests: []rig.GuestTraffic{{MAC: "52:54:00:00:00:01"}, {MAC: "52:54:00:00:00:02", Misdelivered: 3}}}
	if err := x.misdelivered(); err == nil || !strings.Contains(err.Error(), "guest 1 (52:54:00:00:00:02) received 3 frames") {
		t.Errorf("err = %v", err)
	}
	x.Guests[1].Misdelivered = 0
	if err := x.misdelivered(); err != nil {
		t.Errorf("no misdelivery: %v", err)
	}
	if err := (*simExtra)(nil).misdelivered(); err != nil {
		t.Errorf("one guest: %v", err)
	}
}
