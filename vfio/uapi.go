package vfio

// This file mirrors the parts of the kernel's UAPI header linux/vfio.h that
// the package uses: request numbers, flag bits and struct layouts. The layouts
// are checked field by field against the header in uapi_test.go.

// Every VFIO request is declared in linux/vfio.h as _IO(VFIO_TYPE, VFIO_BASE+n):
// no direction or size bits, even for requests that pass a struct. The
// struct's leading argsz field carries the size instead, which lets the
// kernel grow a struct without renumbering the request.
const (
	vfioType = ';' // VFIO_TYPE
	vfioBase = 100 // VFIO_BASE
)

// ioctlIO is the kernel's _IO(type, nr) macro: _IOC(_IOC_NONE, type, nr, 0).
// iocNone and iocDirShift differ between architectures (see ioc_*.go).
func ioctlIO(typ, nr uintptr) uintptr {
	return iocNone<<iocDirShift | typ<<8 | nr
}

// Container (/dev/vfio/vfio) requests.
var (
	reqGetAPIVersion  = ioctlIO(vfioType, vfioBase+0)  // VFIO_GET_API_VERSION
	reqCheckExtension = ioctlIO(vfioType, vfioBase+1)  // VFIO_CHECK_EXTENSION
	reqSetIOMMU       = ioctlIO(vfioType, vfioBase+2)  // VFIO_SET_IOMMU
	reqIOMMUGetInfo   = ioctlIO(vfioType, vfioBase+12) // VFIO_IOMMU_GET_INFO
	reqIOMMUMapDMA    = ioctlIO(vfioType, vfioBase+13) // VFIO_IOMMU_MAP_DMA
	reqIOMMUUnmapDMA  = ioctlIO(vfioType, vfioBase+14) // VFIO_IOMMU_UNMAP_DMA
)

// Group (/dev/vfio/N) requests.
var (
	reqGroupGetStatus      = ioctlIO(vfioType, vfioBase+3) // VFIO_GROUP_GET_STATUS
	reqGroupSetContainer   = ioctlIO(vfioType, vfioBase+4) // VFIO_GROUP_SET_CONTAINER
	reqGroupUnsetContainer = ioctlIO(vfioType, vfioBase+5) // VFIO_GROUP_UNSET_CONTAINER
	reqGroupGetDeviceFD    = ioctlIO(vfioType, vfioBase+6) // VFIO_GROUP_GET_DEVICE_FD
)

// Device fd requests.
var (
	reqDeviceGetInfo       = ioctlIO(vfioType, vfioBase+7)  // VFIO_DEVICE_GET_INFO
	reqDeviceGetRegionInfo = ioctlIO(vfioType, vfioBase+8)  // VFIO_DEVICE_GET_REGION_INFO
	reqDeviceGetIRQInfo    = ioctlIO(vfioType, vfioBase+9)  // VFIO_DEVICE_GET_IRQ_INFO
	reqDeviceSetIRQs       = ioctlIO(vfioType, vfioBase+10) // VFIO_DEVICE_SET_IRQS
	reqDeviceReset         = ioctlIO(vfioType, vfioBase+11) // VFIO_DEVICE_RESET
)

// apiVersion is VFIO_API_VERSION, the only version the kernel has ever had.
const apiVersion = 0

// Extension is a VFIO extension number as VFIO_CHECK_EXTENSION takes it. The
// IOMMU backends are extensions too, and VFIO_SET_IOMMU takes the same number.
type Extension uint32

const (
	Type1IOMMU   Extension = 1 // VFIO_TYPE1_IOMMU
	Type1v2IOMMU Extension = 3 // VFIO_TYPE1v2_IOMMU: the backend to use on x86 and arm64
	NoIOMMU      Extension = 8 // VFIO_NOIOMMU_IOMMU: no translation, no isolation
	UnmapAll     Extension = 9 // VFIO_UNMAP_ALL
)

func (e Extension) String() string {
	switch e {
	case Type1IOMMU:
		return "TYPE1_IOMMU"
	case Type1v2IOMMU:
		return "TYPE1v2_IOMMU"
	case NoIOMMU:
		return "NOIOMMU_IOMMU"
	case UnmapAll:
		return "UNMAP_ALL"
	}
	return "extension?"
}

// struct vfio_group_status.
type groupStatus struct {
	argsz uint32
	flags uint32
}

const (
	groupFlagsViable       = 1 << 0 // VFIO_GROUP_FLAGS_VIABLE
	groupFlagsContainerSet = 1 << 1 // VFIO_GROUP_FLAGS_CONTAINER_SET
)

// struct vfio_device_info.
type deviceInfo struct {
	argsz      uint32
	flags      uint32
	numRegions uint32
	numIRQs    uint32
	capOffset  uint32
}

const (
	deviceFlagsReset = 1 << 0 // VFIO_DEVICE_FLAGS_RESET
	deviceFlagsPCI   = 1 << 1 // VFIO_DEVICE_FLAGS_PCI
)

// struct vfio_region_info.
type regionInfo struct {
	argsz     uint32
	flags     uint32
	index     uint32
	capOffset uint32
	size      uint64
	offset    uint64
}

const (
	regionFlagRead  = 1 << 0 // VFIO_REGION_INFO_FLAG_READ
	regionFlagWrite = 1 << 1 // VFIO_REGION_INFO_FLAG_WRITE
	regionFlagMmap  = 1 << 2 // VFIO_REGION_INFO_FLAG_MMAP
	regionFlagCaps  = 1 << 3 // VFIO_REGION_INFO_FLAG_CAPS
)

// Region indexes of a vfio-pci device (enum in linux/vfio.h).
const (
	RegionBAR0   = 0 // VFIO_PCI_BAR0_REGION_INDEX; BARn is RegionBAR0+n
	RegionROM    = 6 // VFIO_PCI_ROM_REGION_INDEX
	RegionConfig = 7 // VFIO_PCI_CONFIG_REGION_INDEX
	RegionVGA    = 8 // VFIO_PCI_VGA_REGION_INDEX
)

// struct vfio_irq_info.
type irqInfo struct {
	argsz uint32
	flags uint32
	index uint32
	count uint32
}

const (
	irqInfoEventfd    = 1 << 0 // VFIO_IRQ_INFO_EVENTFD
	irqInfoMaskable   = 1 << 1 // VFIO_IRQ_INFO_MASKABLE
	irqInfoAutomasked = 1 << 2 // VFIO_IRQ_INFO_AUTOMASKED
	irqInfoNoResize   = 1 << 3 // VFIO_IRQ_INFO_NORESIZE
)

// struct vfio_irq_set without its flexible data[] array; the request is
// sent as a byte buffer holding this header followed by the data (see
// encodeIRQSet).
type irqSet struct {
	argsz uint32
	flags uint32
	index uint32
	start uint32
	count uint32
}

const irqSetHeaderSize = 20 // sizeof(struct vfio_irq_set)

const (
	irqSetDataNone      = 1 << 0 // VFIO_IRQ_SET_DATA_NONE
	irqSetDataBool      = 1 << 1 // VFIO_IRQ_SET_DATA_BOOL
	irqSetDataEventfd   = 1 << 2 // VFIO_IRQ_SET_DATA_EVENTFD
	irqSetActionMask    = 1 << 3 // VFIO_IRQ_SET_ACTION_MASK
	irqSetActionUnmask  = 1 << 4 // VFIO_IRQ_SET_ACTION_UNMASK
	irqSetActionTrigger = 1 << 5 // VFIO_IRQ_SET_ACTION_TRIGGER
)

// struct vfio_iommu_type1_info (without the capability chain).
type iommuType1Info struct {
	argsz       uint32
	flags       uint32
	iovaPgsizes uint64
	capOffset   uint32
	_           uint32 // tail padding the C struct has too
}

const iommuInfoPgsizes = 1 << 0 // VFIO_IOMMU_INFO_PGSIZES

// struct vfio_iommu_type1_dma_map.
type dmaMap struct {
	argsz uint32
	flags uint32
	vaddr uint64
	iova  uint64
	size  uint64
}

const (
	dmaMapFlagRead  = 1 << 0 // VFIO_DMA_MAP_FLAG_READ
	dmaMapFlagWrite = 1 << 1 // VFIO_DMA_MAP_FLAG_WRITE
)

// struct vfio_iommu_type1_dma_unmap (without the flexible data[] array, which
// only the dirty-bitmap flag uses).
type dmaUnmap struct {
	argsz uint32
	flags uint32
	iova  uint64
	size  uint64
}
