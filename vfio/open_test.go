package vfio

import (
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

const testAddr = "0000:01:00.0"

// fakeTree is a sysfs root and a /dev root in a temporary directory.
type fakeTree struct {
	sys, dev string
}

func newFakeTree(t *testing.T) fakeTree {
	t.Helper()
	root := t.TempDir()
	ft := fakeTree{sys: filepath.Join(root, "sys"), dev: filepath.Join(root, "dev")}
	mustMkdir(t, filepath.Join(ft.sys, "bus", "pci", "drivers"))
	mustMkdir(t, filepath.Join(ft.dev, "vfio"))
	return ft
}

func (ft fakeTree) opts(extra ...Option) []Option {
	return append([]Option{withRoots(ft.sys, ft.dev)}, extra...)
}

// addDevice creates a PCI function; group < 0 means no iommu_group link and
// driver "" means unbound.
func (ft fakeTree) addDevice(t *testing.T, addr string, group int, driver string) {
	t.Helper()
	dev := filepath.Join(ft.sys, "bus", "pci", "devices", addr)
	mustMkdir(t, dev)
	if group >= 0 {
		gdir := filepath.Join(ft.sys, "kernel", "iommu_groups", strconv.Itoa(group))
		mustMkdir(t, filepath.Join(gdir, "devices"))
		mustSymlink(t, gdir, filepath.Join(dev, "iommu_group"))
		mustSymlink(t, dev, filepath.Join(gdir, "devices", addr))
	}
	if driver != "" {
		mustMkdir(t, filepath.Join(ft.sys, "bus", "pci", "drivers", driver))
		mustSymlink(t, filepath.Join(ft.sys, "bus", "pci", "drivers", driver), filepath.Join(dev, "driver"))
	}
}

func mustSymlink(t *testing.T, target, link string) {
	t.Helper()
	if err := os.Symlink(target, link); err != nil {
		t.Fatal(err)
	}
}

// wantErr checks that err wraps target (if not nil) and mentions every
// fragment, the advice the operator needs.
func wantErr(t *testing.T, err, target error, fragments ...string) {
	t.Helper()
	if err == nil {
		t.Fatalf("got no error, want one mentioning %q", fragments)
	}
	if target != nil && !errors.Is(err, target) {
		t.Errorf("error %q does not wrap %v", err, target)
	}
	for _, f := range fragments {
		if !strings.Contains(err.Error(), f) {
			t.Errorf("error %q does not mention %q", err, f)
		}
	}
}

func TestOpenInvalidAddress(t *testing.T) {
	ft := newFakeTree(t)
	_, err := Open("01:00", ft.opts()...)
	wantErr(t, err, ErrInvalidAddress, "01:00", "0000:01:00.0")
}

func TestOpenNoSuchDevice(t *testing.T) {
	ft := newFakeTree(t)
	_, err := Open(testAddr, ft.opts()...)
	wantErr(t, err, ErrNoDevice, testAddr, "lspci -D")
}

func TestOpenNoIOMMUGroup(t *testing.T) {
	ft := newFakeTree(t)
	ft.addDevice(t, testAddr, -1, "")
	_, err := Open("01:00.0", ft.opts()...) // short form means domain 0000
	wantErr(t, err, ErrNoIOMMUGroup, testAddr, "intel_iommu=on iommu=pt", "enable_unsafe_noiommu_mode=1", "WithNoIOMMU")
}

func TestIOMMUGroupReadsSymlink(t *testing.T) {
	ft := newFakeTree(t)
	ft.addDevice(t, testAddr, 42, "vfio-pci")
	n, err := IOMMUGroup("01:00.0", ft.opts()...)
	if err != nil || n != 42 {
		t.Fatalf("IOMMUGroup = %d, %v; want 42", n, err)
	}
	// A link that does not end in a number is reported, not parsed as 0.
	bad := "0000:02:00.0"
	ft.addDevice(t, bad, -1, "")
	mustSymlink(t, "/somewhere/else", filepath.Join(ft.sys, "bus", "pci", "devices", bad, "iommu_group"))
	_, err = IOMMUGroup(bad, ft.opts()...)
	wantErr(t, err, nil, "not at a group number")
}

func TestOpenNotBoundToVFIO(t *testing.T) {
	ft := newFakeTree(t)
	ft.addDevice(t, testAddr, 7, "")
	_, err := Open(testAddr, ft.opts()...)
	wantErr(t, err, ErrNotBound, "bound to no driver", "zcnet bind "+testAddr, "driver_override", "drivers_probe")

	other := "0000:02:00.0"
	ft.addDevice(t, other, 8, "ixgbe")
	_, err = Open(other, ft.opts()...)
	wantErr(t, err, ErrNotBound, "bound to ixgbe", "unbind", "driver_override")
}

func TestOpenVFIOModuleMissing(t *testing.T) {
	ft := newFakeTree(t)
	ft.addDevice(t, testAddr, 7, "vfio-pci")
	_, err := Open(testAddr, ft.opts()...)
	wantErr(t, err, ErrNoVFIO, "modprobe vfio-pci")
}

func TestOpenContainerThatIsNotVFIO(t *testing.T) {
	// A regular file where /dev/vfio/vfio should be: the open works, the
	// first ioctl fails with ENOTTY, and the error says what is wrong.
	ft := newFakeTree(t)
	ft.addDevice(t, testAddr, 7, "vfio-pci")
	mustWrite(t, filepath.Join(ft.dev, "vfio", "vfio"), "")
	_, err := Open(testAddr, ft.opts()...)
	wantErr(t, err, ErrNoVFIO, "VFIO_GET_API_VERSION", "not the VFIO container")
	if !errors.Is(err, unix.ENOTTY) {
		t.Errorf("error %q does not carry the ioctl's ENOTTY", err)
	}
}

func TestOpenGroupMissingFiles(t *testing.T) {
	ft := newFakeTree(t)
	// Neither the group nor the container: VFIO is not loaded.
	_, err := OpenGroup(5, ft.opts()...)
	wantErr(t, err, ErrNoVFIO, "modprobe vfio-pci")

	// Container present, group file absent: nothing of the group is bound.
	mustWrite(t, filepath.Join(ft.dev, "vfio", "vfio"), "")
	_, err = OpenGroup(5, ft.opts()...)
	wantErr(t, err, ErrNotBound, "/vfio/5", "zcnet bind")

	// Only the no-IOMMU file exists: say so instead of "not bound".
	mustWrite(t, filepath.Join(ft.dev, "vfio", "noiommu-5"), "")
	_, err = OpenGroup(5, ft.opts()...)
	wantErr(t, err, nil, "noiommu-5", "no-IOMMU group", "WithNoIOMMU")

	// And the reverse.
	mustWrite(t, filepath.Join(ft.dev, "vfio", "6"), "")
	_, err = OpenGroup(6, ft.opts(WithNoIOMMU())...)
	wantErr(t, err, nil, "noiommu-6", "real IOMMU", "without WithNoIOMMU")
}

func TestOpenGroupAndStatusOnNonVFIOFile(t *testing.T) {
	ft := newFakeTree(t)
	mustWrite(t, filepath.Join(ft.dev, "vfio", "3"), "")
	g, err := OpenGroup(3, ft.opts()...)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Number() != 3 {
		t.Errorf("Number = %d", g.Number())
	}
	_, err = g.Status()
	wantErr(t, err, unix.ENOTTY, "VFIO_GROUP_GET_STATUS", "group 3")
	_, err = g.OpenDevice(testAddr)
	wantErr(t, err, nil, "not in a container", "AddGroup")
}

func TestNotViableListsGroupMembers(t *testing.T) {
	ft := newFakeTree(t)
	ft.addDevice(t, "0000:01:00.0", 12, "vfio-pci")
	ft.addDevice(t, "0000:01:00.1", 12, "ixgbe")
	ft.addDevice(t, "0000:00:01.0", 12, "pcieport")
	ft.addDevice(t, "0000:01:00.2", 12, "")
	cfg := newConfig(ft.opts())
	err := cfg.notViableError(12)
	wantErr(t, err, ErrGroupNotViable,
		"all devices in IOMMU group 12 must be bound to vfio-pci or unbound",
		"0000:00:01.0 (pcieport), 0000:01:00.0 (vfio-pci), 0000:01:00.1 (ixgbe), 0000:01:00.2 (no driver)",
		"release 0000:01:00.1 with", "unbind")
	if strings.Contains(err.Error(), "release 0000:00:01.0") || strings.Contains(err.Error(), "0000:01:00.2 with") {
		t.Errorf("error %q asks to release a device that does not block the group", err)
	}

	members, err := GroupMembers(12, ft.opts()...)
	if err != nil || len(members) != 4 || members[2] != (GroupMember{"0000:01:00.1", "ixgbe"}) {
		t.Errorf("GroupMembers = %v, %v", members, err)
	}
	_, err = GroupMembers(99, ft.opts()...)
	wantErr(t, err, fs.ErrNotExist, "IOMMU group 99")
}

func TestOpenErrorClassification(t *testing.T) {
	path := "/dev/vfio/12"
	wantErr(t, openError("IOMMU group 12", path, &fs.PathError{Op: "open", Path: path, Err: unix.EBUSY}),
		ErrBusy, "only one process", "fuser /dev/vfio/12")
	wantErr(t, openError("IOMMU group 12", path, &fs.PathError{Op: "open", Path: path, Err: unix.EACCES}),
		fs.ErrPermission, "run as root", "ulimit -l")
	wantErr(t, getDeviceFDError(PCIAddress{Bus: 1}, 12, unix.EBUSY), ErrBusy, "in use")
	wantErr(t, getDeviceFDError(PCIAddress{Bus: 1}, 12, unix.ENODEV), ErrNoDevice, "not in IOMMU group 12")
	wantErr(t, getDeviceFDError(PCIAddress{Bus: 1}, 12, unix.EPERM), fs.ErrPermission, "CAP_SYS_RAWIO")
	wantErr(t, setIOMMUError(Type1v2IOMMU, unix.EPERM), unix.EPERM, "interrupt remapping", "allow_unsafe_interrupts=1")
	wantErr(t, setIOMMUError(NoIOMMU, unix.EPERM), unix.EPERM, "CAP_SYS_RAWIO")
	wantErr(t, mapDMAError(1<<32, 2<<20, unix.EEXIST), unix.EEXIST, "[0x100000000, 0x100200000)", "overlaps")
	wantErr(t, mapDMAError(0, 4096, unix.ENOMEM), unix.ENOMEM, "ulimit -l", "CAP_IPC_LOCK")
}

func TestOpenWithContainerNoIOMMUMismatch(t *testing.T) {
	ft := newFakeTree(t)
	ft.addDevice(t, testAddr, 7, "vfio-pci")
	c := &Container{cfg: newConfig(ft.opts()), groups: map[int]*Group{}}
	_, err := Open(testAddr, ft.opts(WithContainer(c), WithNoIOMMU())...)
	wantErr(t, err, nil, "WithNoIOMMU must be given to both")
}

func TestAddGroupRefusesMixedModes(t *testing.T) {
	c := &Container{groups: map[int]*Group{}}
	err := c.AddGroup(&Group{number: 4, noIOMMU: true})
	wantErr(t, err, nil, "cannot be mixed")
}

func TestMapDMAChecks(t *testing.T) {
	mem := make([]byte, 2*pageSize) // never reaches the kernel in these cases

	noiommu := &Container{iommu: NoIOMMU}
	err := noiommu.MapDMA(0, mem)
	wantErr(t, err, ErrDMAWithoutIOMMU, "physical addresses", "nothing isolates")
	wantErr(t, noiommu.UnmapDMA(0, pageSize), ErrDMAWithoutIOMMU)

	empty := &Container{}
	wantErr(t, empty.MapDMA(0, mem), nil, "add a group first")

	c := &Container{iommu: Type1v2IOMMU}
	wantErr(t, c.MapDMA(1<<32, nil), nil, "empty range")
	wantErr(t, c.MapDMA(1<<32+1, mem), nil, "multiples of the")
	wantErr(t, c.MapDMA(1<<32, mem[:100]), nil, "multiples of the")
	wantErr(t, c.UnmapDMA(^uint64(0)&^(pageSize-1), 2*pageSize), nil, "wraps")
}
