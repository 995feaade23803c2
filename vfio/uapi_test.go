package vfio

import (
	"encoding/binary"
	"testing"
	"unsafe" // Sizeof/Offsetof only: compile-time layout facts, no pointer use.
)

// The expected values below were produced by compiling a C program against
// linux/vfio.h (linux-libc-dev 6.1) that printed each request number, sizeof
// and offsetof; they are written out as literals so that a wrong _IO
// computation or a misordered field cannot agree with itself.

func TestIoctlNumbersMatchUAPI(t *testing.T) {
	// powerpc, mips and sparc encode _IO with _IOC_NONE=1 in a direction
	// field starting at bit 29.
	var dir uintptr
	if iocNone == 1 {
		dir = 0x20000000
	}
	want := []struct {
		name string
		got  uintptr
		want uintptr
	}{
		{"VFIO_GET_API_VERSION", reqGetAPIVersion, 0x3b64},
		{"VFIO_CHECK_EXTENSION", reqCheckExtension, 0x3b65},
		{"VFIO_SET_IOMMU", reqSetIOMMU, 0x3b66},
		{"VFIO_GROUP_GET_STATUS", reqGroupGetStatus, 0x3b67},
		{"VFIO_GROUP_SET_CONTAINER", reqGroupSetContainer, 0x3b68},
		{"VFIO_GROUP_UNSET_CONTAINER", reqGroupUnsetContainer, 0x3b69},
		{"VFIO_GROUP_GET_DEVICE_FD", reqGroupGetDeviceFD, 0x3b6a},
		{"VFIO_DEVICE_GET_INFO", reqDeviceGetInfo, 0x3b6b},
		{"VFIO_DEVICE_GET_REGION_INFO", reqDeviceGetRegionInfo, 0x3b6c},
		{"VFIO_DEVICE_GET_IRQ_INFO", reqDeviceGetIRQInfo, 0x3b6d},
		{"VFIO_DEVICE_SET_IRQS", reqDeviceSetIRQs, 0x3b6e},
		{"VFIO_DEVICE_RESET", reqDeviceReset, 0x3b6f},
		{"VFIO_IOMMU_GET_INFO", reqIOMMUGetInfo, 0x3b70},
		{"VFIO_IOMMU_MAP_DMA", reqIOMMUMapDMA, 0x3b71},
		{"VFIO_IOMMU_UNMAP_DMA", reqIOMMUUnmapDMA, 0x3b72},
	}
	for _, w := range want {
		if w.got != w.want|dir {
			t.Errorf("%s = %#x, linux/vfio.h says %#x", w.name, w.got, w.want|dir)
		}
	}
}

func TestUAPIConstants(t *testing.T) {
	checks := []struct {
		name      string
		got, want uint64
	}{
		{"VFIO_API_VERSION", apiVersion, 0},
		{"VFIO_TYPE1_IOMMU", uint64(Type1IOMMU), 1},
		{"VFIO_TYPE1v2_IOMMU", uint64(Type1v2IOMMU), 3},
		{"VFIO_NOIOMMU_IOMMU", uint64(NoIOMMU), 8},
		{"VFIO_UNMAP_ALL", uint64(UnmapAll), 9},
		{"VFIO_GROUP_FLAGS_VIABLE", groupFlagsViable, 1},
		{"VFIO_GROUP_FLAGS_CONTAINER_SET", groupFlagsContainerSet, 2},
		{"VFIO_DEVICE_FLAGS_RESET", deviceFlagsReset, 1},
		{"VFIO_DEVICE_FLAGS_PCI", deviceFlagsPCI, 2},
		{"VFIO_REGION_INFO_FLAG_READ", regionFlagRead, 1},
		{"VFIO_REGION_INFO_FLAG_WRITE", regionFlagWrite, 2},
		{"VFIO_REGION_INFO_FLAG_MMAP", regionFlagMmap, 4},
		{"VFIO_PCI_BAR0_REGION_INDEX", RegionBAR0, 0},
		{"VFIO_PCI_ROM_REGION_INDEX", RegionROM, 6},
		{"VFIO_PCI_CONFIG_REGION_INDEX", RegionConfig, 7},
		{"VFIO_PCI_VGA_REGION_INDEX", RegionVGA, 8},
		{"VFIO_PCI_INTX_IRQ_INDEX", uint64(IRQINTx), 0},
		{"VFIO_PCI_MSI_IRQ_INDEX", uint64(IRQMSI), 1},
		{"VFIO_PCI_MSIX_IRQ_INDEX", uint64(IRQMSIX), 2},
		{"VFIO_PCI_ERR_IRQ_INDEX", uint64(IRQErr), 3},
		{"VFIO_PCI_REQ_IRQ_INDEX", uint64(IRQReq), 4},
		{"VFIO_IRQ_INFO_EVENTFD", irqInfoEventfd, 1},
		{"VFIO_IRQ_INFO_AUTOMASKED", irqInfoAutomasked, 4},
		{"VFIO_IRQ_SET_DATA_NONE", irqSetDataNone, 1},
		{"VFIO_IRQ_SET_DATA_EVENTFD", irqSetDataEventfd, 4},
		{"VFIO_IRQ_SET_ACTION_UNMASK", irqSetActionUnmask, 16},
		{"VFIO_IRQ_SET_ACTION_TRIGGER", irqSetActionTrigger, 32},
		{"VFIO_IOMMU_INFO_PGSIZES", iommuInfoPgsizes, 1},
		{"VFIO_DMA_MAP_FLAG_READ", dmaMapFlagRead, 1},
		{"VFIO_DMA_MAP_FLAG_WRITE", dmaMapFlagWrite, 2},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, linux/vfio.h says %d", c.name, c.got, c.want)
		}
	}
}

func TestStructLayoutsMatchUAPI(t *testing.T) {
	type layout struct {
		name      string
		got, want uintptr
	}
	var (
		gs groupStatus
		di deviceInfo
		ri regionInfo
		ii irqInfo
		is irqSet
		ti iommuType1Info
		dm dmaMap
		du dmaUnmap
	)
	checks := []layout{
		{"sizeof vfio_group_status", unsafe.Sizeof(gs), 8},
		{"vfio_group_status.flags", unsafe.Offsetof(gs.flags), 4},

		{"sizeof vfio_device_info", unsafe.Sizeof(di), 20},
		{"vfio_device_info.flags", unsafe.Offsetof(di.flags), 4},
		{"vfio_device_info.num_regions", unsafe.Offsetof(di.numRegions), 8},
		{"vfio_device_info.num_irqs", unsafe.Offsetof(di.numIRQs), 12},
		{"vfio_device_info.cap_offset", unsafe.Offsetof(di.capOffset), 16},

		{"sizeof vfio_region_info", unsafe.Sizeof(ri), 32},
		{"vfio_region_info.flags", unsafe.Offsetof(ri.flags), 4},
		{"vfio_region_info.index", unsafe.Offsetof(ri.index), 8},
		{"vfio_region_info.cap_offset", unsafe.Offsetof(ri.capOffset), 12},
		{"vfio_region_info.size", unsafe.Offsetof(ri.size), 16},
		{"vfio_region_info.offset", unsafe.Offsetof(ri.offset), 24},

		{"sizeof vfio_irq_info", unsafe.Sizeof(ii), 16},
		{"vfio_irq_info.flags", unsafe.Offsetof(ii.flags), 4},
		{"vfio_irq_info.index", unsafe.Offsetof(ii.index), 8},
		{"vfio_irq_info.count", unsafe.Offsetof(ii.count), 12},

		{"sizeof vfio_irq_set", unsafe.Sizeof(is), 20},
		{"irqSetHeaderSize", irqSetHeaderSize, 20},
		{"vfio_irq_set.argsz", unsafe.Offsetof(is.argsz), 0},
		{"vfio_irq_set.flags", unsafe.Offsetof(is.flags), 4},
		{"vfio_irq_set.index", unsafe.Offsetof(is.index), 8},
		{"vfio_irq_set.start", unsafe.Offsetof(is.start), 12},
		{"vfio_irq_set.count", unsafe.Offsetof(is.count), 16},

		{"sizeof vfio_iommu_type1_info", unsafe.Sizeof(ti), 24},
		{"vfio_iommu_type1_info.iova_pgsizes", unsafe.Offsetof(ti.iovaPgsizes), 8},
		{"vfio_iommu_type1_info.cap_offset", unsafe.Offsetof(ti.capOffset), 16},

		{"sizeof vfio_iommu_type1_dma_map", unsafe.Sizeof(dm), 32},
		{"vfio_iommu_type1_dma_map.flags", unsafe.Offsetof(dm.flags), 4},
		{"vfio_iommu_type1_dma_map.vaddr", unsafe.Offsetof(dm.vaddr), 8},
		{"vfio_iommu_type1_dma_map.iova", unsafe.Offsetof(dm.iova), 16},
		{"vfio_iommu_type1_dma_map.size", unsafe.Offsetof(dm.size), 24},

		{"sizeof vfio_iommu_type1_dma_unmap", unsafe.Sizeof(du), 24},
		{"vfio_iommu_type1_dma_unmap.flags", unsafe.Offsetof(du.flags), 4},
		{"vfio_iommu_type1_dma_unmap.iova", unsafe.Offsetof(du.iova), 8},
		{"vfio_iommu_type1_dma_unmap.size", unsafe.Offsetof(du.size), 16},
	}
	for _, c := range checks {
		if c.got != c.want {
			t.Errorf("%s = %d, linux/vfio.h says %d", c.name, c.got, c.want)
		}
	}
}

// The argsz values the code sends must equal the struct sizes, or the kernel
// either rejects the call or copies fewer fields back than the code reads.
func TestArgszLiteralsMatchSizes(t *testing.T) {
	sent := map[string][2]uintptr{
		"groupStatus":    {8, unsafe.Sizeof(groupStatus{})},
		"deviceInfo":     {20, unsafe.Sizeof(deviceInfo{})},
		"regionInfo":     {32, unsafe.Sizeof(regionInfo{})},
		"irqInfo":        {16, unsafe.Sizeof(irqInfo{})},
		"iommuType1Info": {24, unsafe.Sizeof(iommuType1Info{})},
		"dmaMap":         {32, unsafe.Sizeof(dmaMap{})},
		"dmaUnmap":       {24, unsafe.Sizeof(dmaUnmap{})},
	}
	for name, v := range sent {
		if v[0] != v[1] {
			t.Errorf("%s: argsz %d sent, struct is %d bytes", name, v[0], v[1])
		}
	}
}

func TestEncodeIRQSet(t *testing.T) {
	buf := encodeIRQSet(irqSetDataEventfd|irqSetActionTrigger, uint32(IRQMSIX), 0, 3, []int32{7, -1, 9})
	want := []uint32{20 + 12, 4 | 32, 2, 0, 3, 7, 0xffffffff, 9}
	if len(buf) != 4*len(want) {
		t.Fatalf("len = %d, want %d", len(buf), 4*len(want))
	}
	for i, w := range want {
		if got := binary.NativeEndian.Uint32(buf[4*i:]); got != w {
			t.Errorf("word %d = %#x, want %#x", i, got, w)
		}
	}
	// Disable: DATA_NONE|ACTION_TRIGGER, count 0, no data.
	buf = encodeIRQSet(irqSetDataNone|irqSetActionTrigger, uint32(IRQMSI), 0, 0, nil)
	ne := binary.NativeEndian
	if len(buf) != 20 || ne.Uint32(buf) != 20 || ne.Uint32(buf[4:]) != 1|32 || ne.Uint32(buf[8:]) != 1 || ne.Uint32(buf[16:]) != 0 {
		t.Errorf("disable request = % x", buf)
	}
}
