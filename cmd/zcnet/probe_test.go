package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
)

// fakeFunction describes one PCI function of a fabricated sysfs tree.
type fakeFunction struct {
	addr           string
	vendor, device uint16
	class          uint8
	driver         string
	group          string
	numa           string
	totalVFs       string
}

// buildTree fabricates the sysfs and /dev entries that ghw and the prober
// read, under a temporary root.
func buildTree(t *testing.T, fns []fakeFunction, vfioPCI bool, devGroups ...string) string {
	t.Helper()
	root := t.TempDir()
	w := func(path, s string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(s), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	link := func(target, path string) {
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.Symlink(target, path); err != nil {
			t.Fatal(err)
		}
	}
	sys := filepath.Join(root, "sys")
	for _, f := range fns {
		dev := filepath.Join(sys, "bus", "pci", "devices", f.addr)
		w(filepath.Join(dev, "modalias"), fmt.Sprintf("pci:v%08Xd%08Xsv%08Xsd%08Xbc%02Xsc00i00\n", f.vendor, f.device, f.vendor, 0, f.class))
		w(filepath.Join(dev, "revision"), "0x01\n")
		if f.numa != "" {
			w(filepath.Join(dev, "numa_node"), f.numa+"\n")
		}
		if f.totalVFs != "" {
			w(filepath.Join(dev, "sriov_totalvfs"), f.totalVFs+"\n")
			w(filepath.Join(dev, "sriov_numvfs"), "0\n")
		}
		if f.driver != "" {
			if err := os.MkdirAll(filepath.Join(sys, "bus", "pci", "drivers", f.driver), 0o755); err != nil {
				t.Fatal(err)
			}
			link(filepath.Join(sys, "bus", "pci", "drivers", f.driver), filepath.Join(dev, "driver"))
		}
		if f.group != "" {
			g := filepath.Join(sys, "kernel", "iommu_groups", f.group)
			w(filepath.Join(g, "type"), "DMA\n")
			link(g, filepath.Join(dev, "iommu_group"))
		}
	}
	if vfioPCI {
		if err := os.MkdirAll(filepath.Join(sys, "bus", "pci", "drivers", "vfio-pci"), 0o755); err != nil {
			t.Fatal(err)
		}
		w(filepath.Join(root, "dev", "vfio", "vfio"), "")
	}
	for _, g := range devGroups {
		w(filepath.Join(root, "dev", "vfio", g), "")
	}
	return root
}

func TestProbeFabricatedHost(t *testing.T) {
	root := buildTree(t, []fakeFunction{
		{addr: "0000:03:00.0", vendor: 0x8086, device: 0x10fb, class: 2, driver: "ixgbe", group: "12", numa: "1", totalVFs: "63"},
		{addr: "0000:03:10.0", vendor: 0x8086, device: 0x10ed, class: 2, driver: "vfio-pci", group: "40", numa: "1"},
		{addr: "0000:04:00.0", vendor: 0x8086, device: 0x1528, class: 2, driver: "ixgbe", group: "13"},
		{addr: "0000:05:00.0", vendor: 0x8086, device: 0x10d3, class: 2, driver: "e1000e"},
		{addr: "0000:06:00.0", vendor: 0x8086, device: 0x10fb, class: 2, driver: "vfio-pci", group: "41"},
		{addr: "0000:00:1f.0", vendor: 0x8086, device: 0x2918, class: 6},
	}, true, "40", "41")

	rep, err := prober{root: root}.run()
	if err != nil {
		t.Fatal(err)
	}
	if !rep.Host.VFIOContainer || !rep.Host.VFIOPCI || rep.Host.IOMMUGroups != 4 {
		t.Errorf("host = %+v; want /dev/vfio/vfio, vfio-pci and 4 IOMMU groups", rep.Host)
	}
	byAddr := map[string]deviceReport{}
	for _, d := range rep.Devices {
		byAddr[d.Address] = d
	}
	if len(byAddr) != 5 {
		t.Fatalf("got devices %v; want the 5 network functions and not the class-06 bridge", rep.Devices)
	}

	pf := byAddr["0000:03:00.0"]
	if pf.Family != "82599" || pf.Function != "PF" || pf.Driver != "ixgbe" || pf.IOMMUGroup != "12" ||
		pf.NUMANode != 1 || pf.SRIOVTotalVFs != 63 || pf.Usable {
		t.Errorf("82599 PF report = %+v", pf)
	}
	if !strings.Contains(pf.Verdict, "bound to ixgbe: zcnet bind 0000:03:00.0") {
		t.Errorf("PF verdict %q should tell the operator to bind it", pf.Verdict)
	}

	vf := byAddr["0000:03:10.0"]
	if vf.Function != "VF" || vf.Driver != "vfio-pci" {
		t.Errorf("82599 VF report = %+v", vf)
	}
	if strings.Contains(vf.Verdict, "does not drive") {
		t.Errorf("VF verdict %q: zcnet serves a guest on an 82599 VF", vf.Verdict)
	}
	if hugepagesFree(t) {
		if !vf.Usable || !strings.HasPrefix(vf.Verdict, "usable now: one guest on this VF") {
			t.Errorf("82599 VF bound to vfio-pci with its group node and free hugepages: verdict %q", vf.Verdict)
		}
	} else if vf.Usable || !strings.Contains(vf.Verdict, "hugepages") {
		t.Errorf("no free hugepages here, yet the VF's verdict is %q", vf.Verdict)
	}
	ready := byAddr["0000:06:00.0"]
	if hugepagesFree(t) {
		if !ready.Usable || ready.Verdict != "usable now" {
			t.Errorf("PF bound to vfio-pci with its group node and free hugepages: verdict %q", ready.Verdict)
		}
	} else if ready.Usable || !strings.Contains(ready.Verdict, "hugepages") {
		t.Errorf("no free hugepages here, yet the PF's verdict is %q", ready.Verdict)
	}

	if x := byAddr["0000:04:00.0"]; x.Usable || !strings.Contains(x.Verdict, "recognised but") {
		t.Errorf("X540 verdict %q", x.Verdict)
	}
	if e := byAddr["0000:05:00.0"]; e.Usable || e.Family != "" || !strings.Contains(e.Verdict, "not an 82599") {
		t.Errorf("e1000e report %+v", e)
	}

	var text bytes.Buffer
	if err := rep.writeText(&text); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"0000:03:00.0", "8086:10fb", "Intel 82599ES SFP+", "0/63", "IOMMU groups 4"} {
		if !strings.Contains(text.String(), want) {
			t.Errorf("text report lacks %q:\n%s", want, text.String())
		}
	}
	var back probeReport
	var js bytes.Buffer
	if err := json.NewEncoder(&js).Encode(rep); err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(js.Bytes(), &back); err != nil || len(back.Devices) != 5 || back.Devices[0].Verdict == "" {
		t.Errorf("JSON round trip: %v, %+v", err, back)
	}
}

func hugepagesFree(t *testing.T) bool {
	st, err := hugepage.Status()
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range st {
		if s.Available() > 0 {
			return true
		}
	}
	return false
}

func TestVerdictListsEveryMissingStep(t *testing.T) {
	pf, _ := ixgbe.Lookup(0x8086, 0x10fb)
	ready := hostReport{VFIOPCI: true, VFIOContainer: true, Hugepages: []hugepageReport{{Size: "2MiB", Available: 4}}}
	bound := deviceReport{Address: "0000:01:00.0", Driver: "vfio-pci", IOMMUGroup: "7"}

	if ok, v := verdict(pf, bound, ready, true); !ok || v != "usable now" {
		t.Errorf("ready device: %v %q", ok, v)
	}
	bare := hostReport{}
	unbound := deviceReport{Address: "0000:01:00.0", Driver: "ixgbe"}
	ok, v := verdict(pf, unbound, bare, false)
	if ok {
		t.Fatal("a host with nothing set up was judged usable")
	}
	wantInOrder := []string{"intel_iommu=on", "modprobe vfio-pci", "zcnet bind 0000:01:00.0", "make hugepages"}
	last := -1
	for _, w := range wantInOrder {
		i := strings.Index(v, w)
		if i < 0 || i < last {
			t.Errorf("verdict %q: %q missing or out of order", v, w)
		}
		last = i
	}
	if _, v := verdict(pf, bound, ready, false); !strings.Contains(v, "/dev/vfio/7 missing") {
		t.Errorf("group node missing: verdict %q", v)
	}
	noiommu := ready
	noiommu.NoIOMMU = true
	if ok, v := verdict(pf, deviceReport{Address: "0000:01:00.0", Driver: "vfio-pci"}, noiommu, true); !ok {
		t.Errorf("no-IOMMU mode needs no group: %q", v)
	}
}
