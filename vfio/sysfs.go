package vfio

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// Option adjusts how Open, OpenContainer and OpenGroup reach the kernel.
type Option func(*config)

type config struct {
	// sysfsRoot and devRoot are "/sys" and "/dev"; tests point them at fake
	// trees in a temporary directory to produce the error paths.
	sysfsRoot string
	devRoot   string
	noIOMMU   bool
	container *Container
}

// WithNoIOMMU selects VFIO's no-IOMMU mode (/dev/vfio/noiommu-N and the
// VFIO_NOIOMMU_IOMMU backend) for a machine without an IOMMU. The device is
// then not isolated: its DMA uses physical addresses, it can read and write
// all memory, and MapDMA is impossible. The kernel must have it enabled
// (vfio module parameter enable_unsafe_noiommu_mode=1) and the process needs
// CAP_SYS_RAWIO.
func WithNoIOMMU() Option { return func(c *config) { c.noIOMMU = true } }

// WithContainer makes Open put the device into an existing container, so
// that several devices share one IOMMU domain (one set of DMA mappings).
func WithContainer(c *Container) Option { return func(cfg *config) { cfg.container = c } }

// withRoots replaces /sys and /dev, for tests.
func withRoots(sysfs, dev string) Option {
	return func(c *config) { c.sysfsRoot, c.devRoot = sysfs, dev }
}

func newConfig(opts []Option) config {
	c := config{sysfsRoot: "/sys", devRoot: "/dev"}
	for _, o := range opts {
		o(&c)
	}
	return c
}

func (c *config) containerPath() string { return filepath.Join(c.devRoot, "vfio", "vfio") }

func (c *config) groupPath(group int, noIOMMU bool) string {
	name := strconv.Itoa(group)
	if noIOMMU {
		name = "noiommu-" + name
	}
	return filepath.Join(c.devRoot, "vfio", name)
}

func (c *config) pciDevicePath(addr PCIAddress) string {
	return filepath.Join(c.sysfsRoot, "bus", "pci", "devices", addr.String())
}

func (c *config) groupDevicesPath(group int) string {
	return filepath.Join(c.sysfsRoot, "kernel", "iommu_groups", strconv.Itoa(group), "devices")
}

// checkDeviceExists fails with ErrNoDevice unless sysfs knows addr.
func (c *config) checkDeviceExists(addr PCIAddress) error {
	if _, err := os.Stat(c.pciDevicePath(addr)); err != nil {
		return fmt.Errorf("%w: %s is not in %s: check the address with `lspci -D` or `zcnet probe`", ErrNoDevice, addr, filepath.Dir(c.pciDevicePath(addr)))
	}
	return nil
}

// iommuGroup reads the device's IOMMU group number from the iommu_group
// symlink, which points at /sys/kernel/iommu_groups/N.
func (c *config) iommuGroup(addr PCIAddress) (int, error) {
	if err := c.checkDeviceExists(addr); err != nil {
		return -1, err
	}
	link := filepath.Join(c.pciDevicePath(addr), "iommu_group")
	target, err := os.Readlink(link)
	if errors.Is(err, fs.ErrNotExist) {
		return -1, fmt.Errorf("%w: %s has no %s: the IOMMU is off. Enable it with intel_iommu=on iommu=pt (amd_iommu=on on AMD) on the kernel command line and turn on VT-d/AMD-Vi in the firmware; "+
			"or, accepting no isolation at all, use no-IOMMU mode: modprobe vfio enable_unsafe_noiommu_mode=1, bind the device to vfio-pci again and open it with WithNoIOMMU (zcnet --noiommu)",
			ErrNoIOMMUGroup, addr, link)
	}
	if err != nil {
		return -1, fmt.Errorf("read IOMMU group of %s: %w", addr, err)
	}
	n, err := strconv.Atoi(filepath.Base(target))
	if err != nil || n < 0 {
		return -1, fmt.Errorf("read IOMMU group of %s: %s points at %q, not at a group number", addr, link, target)
	}
	return n, nil
}

// IOMMUGroup returns the IOMMU group of the PCI function at address, the N
// of /dev/vfio/N.
func IOMMUGroup(address string, opts ...Option) (int, error) {
	addr, err := ParseAddress(address)
	if err != nil {
		return -1, err
	}
	cfg := newConfig(opts)
	return cfg.iommuGroup(addr)
}

// isVFIODriver reports whether a driver hands its device to VFIO: vfio-pci
// itself and the vendor variants built on vfio-pci-core (mlx5_vfio_pci,
// hisi_acc_vfio_pci, ...).
func isVFIODriver(driver string) bool {
	return driver == "vfio-pci" || strings.HasSuffix(driver, "_vfio_pci")
}

// checkBound fails with ErrNotBound unless addr is bound to a VFIO driver.
func (c *config) checkBound(addr PCIAddress) error {
	b := Binder{SysfsRoot: c.sysfsRoot}
	driver, err := b.currentDriver(addr.String())
	if err != nil {
		return err
	}
	switch {
	case isVFIODriver(driver):
		return nil
	case driver == "":
		return fmt.Errorf("%w: %s is bound to no driver: bind it with `zcnet bind %s` (or: echo vfio-pci > %s/driver_override; echo %s > %s/bus/pci/drivers_probe)",
			ErrNotBound, addr, addr, c.pciDevicePath(addr), addr, c.sysfsRoot)
	default:
		return fmt.Errorf("%w: %s is bound to %s: hand it to vfio-pci with `zcnet bind %s` (or: echo %s > %s/driver/unbind; echo vfio-pci > %s/driver_override; echo %s > %s/bus/pci/drivers_probe)",
			ErrNotBound, addr, driver, addr, addr, c.pciDevicePath(addr), c.pciDevicePath(addr), addr, c.sysfsRoot)
	}
}

// GroupMember is one device of an IOMMU group and the driver it is bound to.
type GroupMember struct {
	Address string
	Driver  string // "" when unbound
}

// blocksVFIO reports whether the member's driver keeps the group from being
// viable: the kernel allows only drivers that leave DMA ownership to VFIO
// (the VFIO drivers, pci-stub, and pcieport on bridges) or no driver.
func (m GroupMember) blocksVFIO() bool {
	return m.Driver != "" && !isVFIODriver(m.Driver) && m.Driver != "pci-stub" && m.Driver != "pcieport"
}

// groupMembers lists the devices of an IOMMU group from
// /sys/kernel/iommu_groups/N/devices, sorted by address.
func (c *config) groupMembers(group int) ([]GroupMember, error) {
	dir := c.groupDevicesPath(group)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("list IOMMU group %d: %w", group, err)
	}
	members := make([]GroupMember, 0, len(entries))
	for _, e := range entries {
		m := GroupMember{Address: e.Name()}
		if target, err := os.Readlink(filepath.Join(dir, e.Name(), "driver")); err == nil {
			m.Driver = filepath.Base(target)
		}
		members = append(members, m)
	}
	sort.Slice(members, func(i, j int) bool { return members[i].Address < members[j].Address })
	return members, nil
}

// GroupMembers lists the devices of IOMMU group group with their drivers.
func GroupMembers(group int, opts ...Option) ([]GroupMember, error) {
	cfg := newConfig(opts)
	return cfg.groupMembers(group)
}

// notViableError explains VFIO_GROUP_GET_STATUS without the VIABLE flag by
// listing who holds the group's devices.
func (c *config) notViableError(group int) error {
	members, err := c.groupMembers(group)
	if err != nil {
		return fmt.Errorf("%w: all devices in IOMMU group %d must be bound to vfio-pci or unbound (and %v)", ErrGroupNotViable, group, err)
	}
	var list, blockers []string
	for _, m := range members {
		driver := m.Driver
		if driver == "" {
			driver = "no driver"
		}
		list = append(list, fmt.Sprintf("%s (%s)", m.Address, driver))
		if m.blocksVFIO() {
			blockers = append(blockers, m.Address)
		}
	}
	msg := fmt.Sprintf("all devices in IOMMU group %d must be bound to vfio-pci or unbound: the group holds %s", group, strings.Join(list, ", "))
	if len(blockers) > 0 {
		msg += fmt.Sprintf("; release %s with `zcnet bind` or by writing the address to %s/bus/pci/devices/ADDR/driver/unbind", strings.Join(blockers, ", "), c.sysfsRoot)
	}
	return fmt.Errorf("%w: %s", ErrGroupNotViable, msg)
}
