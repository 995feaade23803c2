package vhost

// Virtio feature bits (virtio 1.2, include/uapi/linux/virtio_net.h,
// virtio_config.h, virtio_ring.h) as used by a virtio-net back end.
const (
	NetFCsum          = 1 << 0  // device handles partial checksums from the driver
	NetFGuestCsum     = 1 << 1  // driver handles partial checksums from the device
	NetFCtrlGuestOffl = 1 << 2  // control channel offload configuration
	NetFMTU           = 1 << 3  // config space mtu is valid
	NetFMAC           = 1 << 5  // config space mac is valid
	NetFGuestTSO4     = 1 << 7  // driver accepts TSOv4 super-frames
	NetFGuestTSO6     = 1 << 8  // driver accepts TSOv6 super-frames
	NetFGuestECN      = 1 << 9  // ... with ECN
	NetFGuestUFO      = 1 << 10 // driver accepts UFO
	NetFHostTSO4      = 1 << 11 // device accepts TSOv4 from the driver
	NetFHostTSO6      = 1 << 12 // device accepts TSOv6 from the driver
	NetFHostECN       = 1 << 13
	NetFHostUFO       = 1 << 14
	NetFMrgRxbuf      = 1 << 15 // RX packets may span several buffers
	NetFStatus        = 1 << 16 // config space status is valid
	NetFCtrlVQ        = 1 << 17 // control virtqueue
	NetFCtrlRx        = 1 << 18 // RX mode control (promisc, allmulti)
	NetFCtrlVLAN      = 1 << 19
	NetFGuestAnnounce = 1 << 21
	NetFMQ            = 1 << 22 // several queue pairs
	NetFCtrlMACAddr   = 1 << 23 // MAC set through the control queue

	FNotifyOnEmpty    = 1 << 24
	FLogAll           = 1 << 26 // VHOST_F_LOG_ALL: dirty logging (migration)
	FAnyLayout        = 1 << 27
	FIndirectDesc     = 1 << 28
	FEventIdx         = 1 << 29
	FProtocolFeatures = 1 << 30 // VHOST_USER_F_PROTOCOL_FEATURES
	FVersion1         = 1 << 32
	FAccessPlatform   = 1 << 33
	FRingPacked       = 1 << 34
	FInOrder          = 1 << 35
)

// Protocol feature bits (VHOST_USER_PROTOCOL_F_*).
const (
	ProtoFMQ                = 1 << 0
	ProtoFLogShmfd          = 1 << 1
	ProtoFRARP              = 1 << 2
	ProtoFReplyAck          = 1 << 3
	ProtoFNetMTU            = 1 << 4
	ProtoFBackendReq        = 1 << 5
	ProtoFCrossEndian       = 1 << 6
	ProtoFCryptoSession     = 1 << 7
	ProtoFPagefault         = 1 << 8
	ProtoFConfig            = 1 << 9
	ProtoFBackendSendFD     = 1 << 10
	ProtoFHostNotifier      = 1 << 11
	ProtoFInflightShmfd     = 1 << 12
	ProtoFResetDevice       = 1 << 13
	ProtoFInbandNotify      = 1 << 14
	ProtoFConfigureMemSlots = 1 << 15
	ProtoFStatus            = 1 << 16
)

// DefaultFeatures is the virtio feature set a zcnet port offers unless it
// chooses otherwise. IN_ORDER is left out: offer it per port if the data
// path completes every queue strictly in order. RING_PACKED is implemented
// but also optional, to be offered per port.
const DefaultFeatures uint64 = FVersion1 | NetFMrgRxbuf | FEventIdx | FIndirectDesc |
	NetFMQ | NetFCtrlVQ | NetFStatus | NetFCsum | NetFGuestCsum |
	NetFHostTSO4 | NetFHostTSO6 | NetFGuestTSO4 | NetFGuestTSO6 | NetFMAC |
	NetFCtrlRx | NetFCtrlMACAddr

// DefaultProtocolFeatures is the protocol feature set offered by default.
// INFLIGHT_SHMFD (split and packed rings, see inflight.go) costs nothing
// when a front end does not use it: without SET_INFLIGHT_FD the data path
// pays one nil check per Pop, Push and Flush. LOG_SHMFD and RARP
// (migration) are offered with Config.Migration; BACKEND_REQ and the rest
// are not implemented and never offered.
const DefaultProtocolFeatures uint64 = ProtoFMQ | ProtoFReplyAck | ProtoFStatus |
	ProtoFConfigureMemSlots | ProtoFResetDevice | ProtoFInflightShmfd

// supportedFeatures is what this package can honour at all; Config.Features
// must stay within it.
//
// FAccessPlatform may be offered for guests whose QEMU sets it without a
// virtual IOMMU (memory-encrypted guests): addresses are still guest
// physical, as no IOTLB messages are handled. Consumers that hand guest
// addresses to hardware may want to treat such guests specially (the
// zero-copy engine copies for them).
const supportedFeatures = DefaultFeatures | FInOrder | FAnyLayout | NetFGuestAnnounce | FRingPacked | FAccessPlatform | FLogAll

const supportedProtocolFeatures = DefaultProtocolFeatures | ProtoFConfig | ProtoFLogShmfd | ProtoFRARP

// Virtio device status bits.
const (
	StatusAcknowledge = 0x01
	StatusDriver      = 0x02
	StatusDriverOK    = 0x04
	StatusFeaturesOK  = 0x08
	StatusNeedsReset  = 0x40
	StatusFailed      = 0x80
)
