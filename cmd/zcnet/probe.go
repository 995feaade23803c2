package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/jaypipes/ghw"
	"github.com/spf13/cobra"

	"github.com/zcnet/zcnet/hugepage"
	"github.com/zcnet/zcnet/ixgbe"
)

// probeReport is what `zcnet probe` finds: the host's readiness for VFIO and
// DMA memory, and every network PCI function with a verdict.
type probeReport struct {
	Host    hostReport     `json:"host"`
	Devices []deviceReport `json:"devices"`
}

type hostReport struct {
	// VFIOContainer is true when /dev/vfio/vfio exists.
	VFIOContainer bool `json:"vfio_container"`
	// VFIOPCI is true when the vfio-pci driver is registered.
	VFIOPCI bool `json:"vfio_pci_driver"`
	// NoIOMMU is true when vfio runs in unsafe no-IOMMU mode.
	NoIOMMU bool `json:"vfio_noiommu"`
	// IOMMUGroups counts /sys/kernel/iommu_groups; 0 means no IOMMU is on.
	IOMMUGroups int              `json:"iommu_groups"`
	Hugepages   []hugepageReport `json:"hugepages"`
	// HugepageError says why hugepage counters could not be read.
	HugepageError string `json:"hugepage_error,omitempty"`
}

type hugepageReport struct {
	Size      string `json:"size"`
	Bytes     uint64 `json:"bytes"`
	Total     uint64 `json:"total"`
	Free      uint64 `json:"free"`
	Available uint64 `json:"available"`
}

type deviceReport struct {
	Address    string `json:"address"`
	VendorID   string `json:"vendor_id"`
	DeviceID   string `json:"device_id"`
	Name       string `json:"name"`
	Driver     string `json:"driver"`
	IOMMUGroup string `json:"iommu_group"`
	NUMANode   int    `json:"numa_node"`
	// SR-IOV totals; both 0 for a function without the capability.
	SRIOVTotalVFs int `json:"sriov_totalvfs"`
	SRIOVNumVFs   int `json:"sriov_numvfs"`
	// Family and Function are set for 82599-family devices ("PF" or "VF").
	Family   string `json:"family,omitempty"`
	Function string `json:"function,omitempty"`
	Usable   bool   `json:"usable"`
	Verdict  string `json:"verdict"`
}

// prober reads the machine. root is "/" except in tests, which point it at a
// fabricated sysfs and /dev tree.
type prober struct {
	root string
}

func (p prober) path(elem ...string) string {
	return filepath.Join(append([]string{p.root}, elem...)...)
}

func (p prober) run() (probeReport, error) {
	var rep probeReport
	rep.Host = p.host()
	info, err := ghw.PCI(ghw.WithChroot(p.root), ghw.WithDisableTopology(), ghw.WithDisableWarnings())
	if err != nil {
		return rep, fmt.Errorf("list PCI devices: %w (the PCI ID database comes from Debian's pci.ids package: apt-get install pci.ids)", err)
	}
	for _, d := range info.Devices {
		if d.Class == nil || d.Class.ID != "02" { // 0x02: network controller
			continue
		}
		rep.Devices = append(rep.Devices, p.device(d, rep.Host))
	}
	return rep, nil
}

func (p prober) host() hostReport {
	var h hostReport
	h.VFIOContainer = exists(p.path("dev", "vfio", "vfio"))
	h.VFIOPCI = exists(p.path("sys", "bus", "pci", "drivers", "vfio-pci"))
	mode, _ := os.ReadFile(p.path("sys", "module", "vfio", "parameters", "enable_unsafe_noiommu_mode"))
	h.NoIOMMU = strings.TrimSpace(string(mode)) == "Y"
	groups, _ := os.ReadDir(p.path("sys", "kernel", "iommu_groups"))
	h.IOMMUGroups = len(groups)
	st, err := hugepage.Status()
	if err != nil {
		h.HugepageError = err.Error()
	}
	for _, s := range st {
		h.Hugepages = append(h.Hugepages, hugepageReport{
			Size: s.Size.String(), Bytes: uint64(s.Size),
			Total: s.Total, Free: s.Free, Available: s.Available(),
		})
	}
	return h
}

func (p prober) device(d *ghw.PCIDevice, h hostReport) deviceReport {
	r := deviceReport{
		Address:    d.Address,
		Driver:     d.Driver,
		IOMMUGroup: d.IOMMUGroup,
		NUMANode:   -1,
	}
	if d.Vendor != nil {
		r.VendorID = d.Vendor.ID
		r.Name = d.Vendor.Name
	}
	if d.Product != nil {
		r.DeviceID = d.Product.ID
		if d.Product.Name != "" && d.Product.Name != "unknown" {
			r.Name += " " + d.Product.Name
		}
	}
	dev := p.path("sys", "bus", "pci", "devices", d.Address)
	if n, ok := readInt(filepath.Join(dev, "numa_node")); ok {
		r.NUMANode = n
	}
	r.SRIOVTotalVFs, _ = readInt(filepath.Join(dev, "sriov_totalvfs"))
	r.SRIOVNumVFs, _ = readInt(filepath.Join(dev, "sriov_numvfs"))

	vendor, _ := strconv.ParseUint(r.VendorID, 16, 16)
	device, _ := strconv.ParseUint(r.DeviceID, 16, 16)
	model, ok := ixgbe.Lookup(uint16(vendor), uint16(device))
	if !ok {
		r.Verdict = "not an 82599-family NIC: zcnet does not drive it"
		return r
	}
	r.Family = string(model.Family)
	r.Function = "PF"
	if model.VF {
		r.Function = "VF"
	}
	r.Name = "Intel " + model.Name
	r.Usable, r.Verdict = verdict(model, r, h, exists(p.path("dev", "vfio", r.IOMMUGroup)))
	return r
}

// verdict decides whether zcnet can take the device now and, if not, lists
// every step still missing, in the order an operator would do them.
func verdict(m ixgbe.Model, r deviceReport, h hostReport, groupNode bool) (bool, string) {
	if !m.Supported {
		if m.VF {
			return false, fmt.Sprintf("%s VF: of the VFs zcnet drives only the 82599's (8086:10ed); give it the PF", m.Family)
		}
		return false, fmt.Sprintf("%s is recognised but zcnet drives only the 82599 PF", m.Family)
	}
	var missing []string
	if r.IOMMUGroup == "" && !h.NoIOMMU {
		missing = append(missing, "no IOMMU group: boot with intel_iommu=on iommu=pt (or amd_iommu=on), or load vfio with enable_unsafe_noiommu_mode=1")
	}
	if !h.VFIOPCI {
		missing = append(missing, "vfio-pci not loaded: modprobe vfio-pci")
	}
	if r.Driver != "vfio-pci" {
		bound := "no driver"
		if r.Driver != "" {
			bound = "bound to " + r.Driver
		}
		missing = append(missing, fmt.Sprintf("%s: zcnet bind %s", bound, r.Address))
	} else if !groupNode {
		missing = append(missing, fmt.Sprintf("/dev/vfio/%s missing: check that vfio-pci claimed the whole IOMMU group", r.IOMMUGroup))
	}
	if !hugepagesAvailable(h) {
		missing = append(missing, "no free hugepages: make hugepages (or echo 1024 > /sys/kernel/mm/hugepages/hugepages-2048kB/nr_hugepages)")
	}
	if len(missing) == 0 {
		if m.VF {
			// The host's ixgbe driver keeps the PF and sets this VF's
			// MAC, VLAN and trust; zcnet serves one guest on it.
			return true, "usable now: one guest on this VF (its MAC, VLAN and trust are the host's: ip link set PF vf N ...)"
		}
		return true, "usable now"
	}
	return false, "missing: " + strings.Join(missing, "; ")
}

func hugepagesAvailable(h hostReport) bool {
	for _, s := range h.Hugepages {
		if s.Available > 0 {
			return true
		}
	}
	return false
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readInt(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	n, err := strconv.Atoi(strings.TrimSpace(string(b)))
	return n, err == nil
}

func (r probeReport) writeText(w io.Writer) error {
	h := r.Host
	fmt.Fprintf(w, "VFIO: /dev/vfio/vfio %s, vfio-pci driver %s, IOMMU groups %d%s\n",
		presence(h.VFIOContainer), presence(h.VFIOPCI), h.IOMMUGroups, map[bool]string{true: ", no-IOMMU mode ON (unsafe)"}[h.NoIOMMU])
	if h.HugepageError != "" {
		fmt.Fprintf(w, "Hugepages: %s\n", h.HugepageError)
	}
	for _, s := range h.Hugepages {
		fmt.Fprintf(w, "Hugepages %s: %d reserved, %d free, %d available\n", s.Size, s.Total, s.Free, s.Available)
	}
	if len(r.Devices) == 0 {
		fmt.Fprintln(w, "No network PCI devices found.")
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ADDRESS\tID\tNAME\tDRIVER\tIOMMU\tNUMA\tVFs\tVERDICT")
	for _, d := range r.Devices {
		fmt.Fprintf(tw, "%s\t%s:%s\t%s\t%s\t%s\t%s\t%s\t%s\n",
			d.Address, d.VendorID, d.DeviceID, d.Name, orDash(d.Driver), orDash(d.IOMMUGroup),
			numa(d.NUMANode), vfs(d), d.Verdict)
	}
	return tw.Flush()
}

func presence(ok bool) string {
	if ok {
		return "present"
	}
	return "missing"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func numa(n int) string {
	if n < 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

func vfs(d deviceReport) string {
	if d.SRIOVTotalVFs == 0 {
		return "-"
	}
	return fmt.Sprintf("%d/%d", d.SRIOVNumVFs, d.SRIOVTotalVFs)
}

func newProbeCommand(a *app) *cobra.Command {
	var asJSON bool
	var root string
	cmd := &cobra.Command{
		Use:   "probe",
		Short: "List network PCI devices and say which zcnet can drive now",
		Long: `probe lists every network PCI function, marks the Intel 82599 family PFs and
VFs, shows their driver, IOMMU group, NUMA node and SR-IOV totals, the free
hugepages and whether VFIO is ready, and ends each device with a verdict:
usable now, or what is missing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rep, err := prober{root: root}.run()
			if err != nil {
				return err
			}
			a.log.Debug("probe done")
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(rep)
			}
			return rep.writeText(cmd.OutOrStdout())
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the report as JSON")
	cmd.Flags().StringVar(&root, "root", "/", "root of the sysfs and /dev tree to read (for inspecting a chroot)")
	_ = cmd.Flags().MarkHidden("root")
	return cmd
}
