package main

import (
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/sim/rig"
)

// frameTo is an n-byte frame (FCS excluded) to dst from a locally
// administered source; the NIC's MAC looks at nothing else.
func frameTo(dst [6]byte, n int) []byte {
	f := make([]byte, n)
	copy(f, dst[:])
	copy(f[6:], []byte{0x02, 0, 0, 0, 0, 0x99})
	f[12], f[13] = 0x08, 0x00
	return f
}

// TestNICDiscardsReachTheOperator: a runt, an oversize frame and a frame
// to an address no filter accepts, sent into the simulated NIC, each show
// up in the telemetry snapshot, `zcnet stats`, /metrics and the summary.
func TestNICDiscardsReachTheOperator(t *testing.T) {
	f := useSimDevices(t)
	dir := t.TempDir()
	sock, tel := filepath.Join(dir, "vm1.sock"), filepath.Join(dir, "tel.sock")
	addr := freeAddr(t)
	stop := startRun("--pci", "0000:03:00.0", "--vhost", sock, "--rxd", "256", "--txd", "256", "--telemetry", tel, "--metrics-addr", addr)
	waitSocket(t, sock)
	waitTelemetry(t, tel)
	pf, _ := f.pf("0000:03:00.0")
	own := rig.PortMAC(pf.Address())
	pf.Deliver(frameTo(own, 42))                                      // runt: RUC, RLEC
	pf.Deliver(frameTo(own, 1600))                                    // over 1518 with FCS: ROC, RLEC
	pf.Deliver(frameTo([6]byte{0x52, 0x54, 0, 0x12, 0x34, 0x56}, 60)) // no filter accepts it
	var n appliance.NICCounters
	for deadline := time.Now().Add(5 * time.Second); time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		n = waitTelemetry(t, tel).NICs[0]
		if n.RxFiltered != nil && *n.RxFiltered > 0 && n.RxUndersize > 0 && n.RxOversize > 0 {
			break
		}
	}
	if n.RxUndersize != 1 || n.RxOversize != 1 || n.RxLengthErrors != 2 || n.RxFiltered == nil || *n.RxFiltered != 1 {
		t.Errorf("snapshot: undersize %d oversize %d length errors %d filtered %v, want 1, 1, 2, 1",
			n.RxUndersize, n.RxOversize, n.RxLengthErrors, n.RxFiltered)
	}
	out, err := execute("stats", "--socket", tel)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`(?m)^\s*0000:03:00.0\s+0\s+1\s+0\s+1\s+0\s+2\s+1\s*$`).MatchString(out) {
		t.Errorf("stats table lacks the NIC's discards (crc 0, undersize 1, fragments 0, oversize 1, jabbers 0, length 2, filtered 1):\n%s", out)
	}
	body, _ := scrape(t, addr)
	for _, want := range []string{
		`zcnet_nic_rx_discarded_total{cause="filtered",nic="0000:03:00.0"} 1`,
		`zcnet_nic_rx_discarded_total{cause="undersize",nic="0000:03:00.0"} 1`,
		`zcnet_nic_rx_discarded_total{cause="oversize",nic="0000:03:00.0"} 1`,
		`zcnet_nic_rx_length_errors_total{nic="0000:03:00.0"} 2`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	out, err = stop()
	if err != nil {
		t.Fatalf("zcnet run: %v\n%s", err, out)
	}
	if !strings.Contains(out, "discarded by the NIC 3 (filtered 1, oversize 1, undersize 1)") {
		t.Errorf("summary lacks the NIC's discards:\n%s", out)
	}
	if strings.Contains(out, "guest: echoed") {
		t.Errorf("summary reports a built-in guest for an external one:\n%s", out)
	}
}
