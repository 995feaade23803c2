package main

import (
	"encoding/json"
	"strings"
	"testing"
)

// TestBenchJSON runs `zcnet bench` briefly at a rate the simulator
// sustains under the race detector, one frame size in both modes, and
// checks the report: every frame came back, the PMD cost was measured from
// the lcore's busy polls, and each mode moved frames the way it says.
func TestBenchJSON(t *testing.T) {
	args := []string{"bench", "--json", "--sizes", "128", "--duration", "800ms", "--warmup", "100ms", "--rate", "3000"}
	out, err := execute(args...)
	if err != nil {
		t.Fatalf("zcnet %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	var rep benchReport
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &rep); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, out)
	}
	if rep.Clock.GHz <= 0 || rep.Clock.Method == "" {
		t.Errorf("no CPU clock for cycles/packet: %+v", rep.Clock)
	}
	if len(rep.Rows) != 2 {
		t.Fatalf("want a row per mode, got %d: %+v", len(rep.Rows), rep.Rows)
	}
	for i, mode := range []string{modeZeroCopy, modeCopy} {
		r := rep.Rows[i]
		if r.Mode != mode || r.FrameSize != 128 || r.AutoRate || r.RateOffered != 3000 {
			t.Errorf("row %d is %s/%d bytes at %g pps (auto %v), want %s/128 at 3000", i, r.Mode, r.FrameSize, r.RateOffered, r.AutoRate, mode)
		}
		// The floor is low: on a loaded machine the generator itself falls
		// behind 3000 pps.
		if r.Sent < 500 || r.Received != r.Sent || r.Lost != 0 || r.IOMMUFaults != 0 {
			t.Errorf("%s: sent %d, received %d, lost %d, IOMMU faults %d", mode, r.Sent, r.Received, r.Lost, r.IOMMUFaults)
		}
		if r.Mpps <= 0 || r.Mpps > 3000*1.5/1e6 {
			t.Errorf("%s: %g Mpps at 3000 pps offered", mode, r.Mpps)
		}
		// Each echoed frame is moved twice by the poll lcore.
		if r.PMDPackets != 2*r.Sent {
			t.Errorf("%s: the lcore moved %d frames for %d echoed, want twice as many", mode, r.PMDPackets, r.Sent)
		}
		if r.NsPerPacket <= 0 || r.CyclesPerPacket <= 0 || r.NsPerForwarded != 2*r.NsPerPacket || r.PMDBusyPolls == 0 {
			t.Errorf("%s: PMD cost not measured: %.1f ns, %.0f cycles per packet, %d busy polls", mode, r.NsPerPacket, r.CyclesPerPacket, r.PMDBusyPolls)
		}
		if r.LatencyP50Us <= 0 || r.LatencyP99Us < r.LatencyP50Us {
			t.Errorf("%s: latency p50 %gus p99 %gus", mode, r.LatencyP50Us, r.LatencyP99Us)
		}
		moved, other := r.ZeroCopy, r.Copied
		if mode == modeCopy {
			moved, other = other, moved
		}
		if moved != r.PMDPackets || other != 0 {
			t.Errorf("%s: zero-copy %d, copied %d of %d frames moved", mode, r.ZeroCopy, r.Copied, r.PMDPackets)
		}
	}
}

func TestBenchFlagErrors(t *testing.T) {
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"--rate", "fast"}, "--rate"},
		{[]string{"--rate", "-5"}, "--rate"},
		{[]string{"--sizes", "40"}, "--sizes"},
		{[]string{"--modes", "turbo"}, "--modes"},
		{[]string{"--duration", "0s"}, "--duration"},
		{[]string{"--start-rate", "10", "--max-rate", "5"}, "--start-rate"},
		{[]string{"-l", "1000"}, "CPU"},
		{[]string{"--guests", "0"}, "--guests"},
		{[]string{"--guests", "65"}, "--guests"},
	} {
		args := append([]string{"bench", "--duration", "10ms"}, c.args...)
		if _, err := execute(args...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("zcnet %s: err = %v, want it to mention %q", strings.Join(args, " "), err, c.want)
		}
	}
}

// TestBenchGuests: with --guests 4 the bench runs four guests on one port
// and one lcore, the generator addressing them in turn: every frame comes
// back through its guest, none reaches another, all zero-copy.
func TestBenchGuests(t *testing.T) {
	rep := runJSON[benchReport](t, "bench", "--json", "--guests", "4", "--sizes", "128", "--modes", "zero-copy",
		"--duration", "800ms", "--warmup", "100ms", "--rate", "3000")
	if rep.Guests != 4 || !strings.Contains(rep.Setup, "4 guests") || len(rep.Rows) != 1 {
		t.Fatalf("report for 4 guests: guests %d, setup %q, %d rows", rep.Guests, rep.Setup, len(rep.Rows))
	}
	r := rep.Rows[0]
	if r.Sent < 500 || r.Received != r.Sent || r.Lost != 0 || r.IOMMUFaults != 0 || r.Misdelivered != 0 {
		t.Errorf("sent %d, received %d, lost %d, IOMMU faults %d, misdelivered %d", r.Sent, r.Received, r.Lost, r.IOMMUFaults, r.Misdelivered)
	}
	if r.PMDPackets != 2*r.Sent || r.ZeroCopy != r.PMDPackets || r.Copied != 0 {
		t.Errorf("the lcore moved %d frames (zero-copy %d, copied %d) for %d echoed", r.PMDPackets, r.ZeroCopy, r.Copied, r.Sent)
	}
}
