package appliance

import (
	"net"
	"os"
	"time"

	"github.com/zcnet/zcnet/engine"
)

// Snapshot is every counter of a running instance at one moment: what the
// telemetry socket serves, `zcnet stats` prints, /metrics exposes and
// `zcnet sim --json` ends with. Counters are totals since start.
type Snapshot struct {
	Command       string           `json:"command"` // "run" or "sim"
	PID           int              `json:"pid"`
	UptimeSeconds float64          `json:"uptime_seconds"`
	NICs          []NICCounters    `json:"nics"`
	Ports         []PortCounters   `json:"ports"`
	Lcores        []LcoreCounters  `json:"lcores"`
	Traffic       *TrafficCounters `json:"traffic,omitempty"`
}

// NICCounters are one NIC port's hardware statistics.
type NICCounters struct {
	Name      string `json:"name"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	TxPackets uint64 `json:"tx_packets"`
	TxBytes   uint64 `json:"tx_bytes"`
	// TxSpoofed: frames a guest sent from an address not its own, dropped
	// by the NIC (a NIC port serving several guests, each with a
	// configured MAC).
	TxSpoofed uint64 `json:"tx_spoofed"`
	// RxMissed: the packet buffer was full (MPC); RxNoDescriptor: a queue
	// had no free descriptor (QPRDC, summed over queues).
	RxMissed       uint64 `json:"rx_missed"`
	RxNoDescriptor uint64 `json:"rx_no_descriptor"`
	// RxQueued: frames the NIC wrote into its receive queues (QPRC,
	// summed over queues): rx_packets = rx_queued + rx_missed +
	// rx_no_descriptor once its packet buffer is empty, on a port with
	// one guest. With several guests the NIC writes one copy of a
	// broadcast or multicast frame per guest, each counted here, and
	// drops frames for no guest's address uncounted.
	RxQueued uint64 `json:"rx_queued"`
	// Frames the MAC discarded (CRCERRS, RUC, RFC, ROC, RJC); the length
	// counters count only frames the address filters passed.
	// RxLengthErrors (RLEC) counts undersize and oversize frames again
	// and is left out of every sum.
	RxCRCErrors    uint64 `json:"rx_crc_errors"`
	RxUndersize    uint64 `json:"rx_undersize"`
	RxFragments    uint64 `json:"rx_fragments"`
	RxOversize     uint64 `json:"rx_oversize"`
	RxJabbers      uint64 `json:"rx_jabbers"`
	RxLengthErrors uint64 `json:"rx_length_errors"`
	// RxFiltered is frames of legal size the address filters rejected.
	// The 82599 has no counter for them; the simulated one does, so the
	// field is there (nil otherwise) only on a simulated NIC.
	RxFiltered *uint64 `json:"rx_filtered,omitempty"`
	// VFResets counts the resets of an SR-IOV VF port by its PF (the
	// host) that the port recovered from; nil on a PF.
	VFResets *uint64 `json:"vf_resets,omitempty"`
}

// Discards are the frames the NIC itself discarded before its packet
// buffer, by cause as the telemetry keys them. "filtered" is there only
// for a simulated NIC.
func (n *NICCounters) Discards() map[string]uint64 {
	d := map[string]uint64{"crc_error": n.RxCRCErrors, "undersize": n.RxUndersize, "fragment": n.RxFragments,
		"oversize": n.RxOversize, "jabber": n.RxJabbers}
	if n.RxFiltered != nil {
		d["filtered"] = *n.RxFiltered
	}
	return d
}

// RxDiscarded sums Discards.
func (n *NICCounters) RxDiscarded() uint64 {
	var sum uint64
	for _, v := range n.Discards() {
		sum += v
	}
	return sum
}

// PortCounters are one channel's counters (a NIC queue pair joined to
// a guest's virtio queue pair): Rx is wire to guest, Tx guest to wire.
type PortCounters struct {
	Name      string `json:"name"`
	RxPackets uint64 `json:"rx_packets"`
	RxBytes   uint64 `json:"rx_bytes"`
	// RxHarvested: frames the port took from its NIC receive queue; each
	// is delivered (rx_packets), dropped under a frame cause of drops
	// (every rx_ cause but rx_chain_unusable, which counts empty guest
	// buffers) or waiting for guest buffers (rx_pending, a gauge).
	RxHarvested uint64 `json:"rx_harvested"`
	RxPending   uint64 `json:"rx_pending"`
	TxPackets   uint64 `json:"tx_packets"`
	TxBytes     uint64 `json:"tx_bytes"`
	ZeroCopy    Dirs   `json:"zero_copy"`
	Copied      Dirs   `json:"copied"`
	// CopyReasons and Drops are keyed by cause (see engine.CopyReasons
	// and engine.Drops).
	CopyReasons map[string]uint64 `json:"copy_reasons"`
	Drops       map[string]uint64 `json:"drops"`
	GuestErrors uint64            `json:"guest_errors"`
	Restarts    uint64            `json:"restarts"`
	// RxRewound: empty guest receive buffers given back, when the port
	// stopped, by rewinding the ring instead of as used entries.
	RxRewound uint64 `json:"rx_rewound"`
	// GuestMemoryFaults: accesses to guest memory that faulted because
	// the front end truncated it; each stopped the port and dropped the
	// guest's session (the process and the other guests carry on).
	GuestMemoryFaults uint64 `json:"guest_memory_faults"`
	// TxRARP: RARPs sent from the guest's MAC when its front end asked
	// (after a live migration, so that switches learn the new port); not
	// in tx_packets.
	TxRARP uint64 `json:"tx_rarp"`
	// GuestMAC is the guest's address the NIC's filter accepts for this
	// port ("" until one is known); GuestMACSource says where it came
	// from: "configured" (--vhost PATH,mac=, --guest-mac, the config
	// file) or "learned" (the source address of the guest's frames).
	GuestMAC       string `json:"guest_mac"`
	GuestMACSource string `json:"guest_mac_source"`
	// MACFilterErrors counts learned guest MACs the NIC's filter refused
	// (its address table full): frames to them are dropped unseen.
	MACFilterErrors uint64 `json:"mac_filter_errors"`
}

// Dirs is a count per direction.
type Dirs struct {
	Rx uint64 `json:"rx"`
	Tx uint64 `json:"tx"`
}

// LcoreCounters are one poll core's counters.
type LcoreCounters struct {
	Lcore       int     `json:"lcore"`
	CPU         int     `json:"cpu"`
	BusyRounds  uint64  `json:"busy_rounds"`
	IdleRounds  uint64  `json:"idle_rounds"`
	BusySeconds float64 `json:"busy_seconds"`
	IdleSeconds float64 `json:"idle_seconds"`
}

// TrafficCounters are the simulated wire's: the generator, the verifying
// sink and the built-in guest (zcnet sim only).
type TrafficCounters struct {
	GeneratorSent uint64  `json:"generator_sent"`
	SinkReceived  uint64  `json:"sink_received"`
	SinkLost      uint64  `json:"sink_lost"`
	SinkBad       uint64  `json:"sink_bad_checksums"`
	LatencyP50Us  float64 `json:"latency_p50_us"`
	LatencyP99Us  float64 `json:"latency_p99_us"`
	// LatencyP999Us and LatencyMaxUs are the tail of the same round
	// trips (generator stamp to sink), from the sink's histogram.
	LatencyP999Us float64 `json:"latency_p999_us"`
	LatencyMaxUs  float64 `json:"latency_max_us"`
	GuestRx       uint64  `json:"guest_rx"`
	GuestTx       uint64  `json:"guest_tx"`
	GuestDropped  uint64  `json:"guest_dropped"`
	TAPFromKernel uint64  `json:"tap_from_kernel,omitempty"`
	TAPToKernel   uint64  `json:"tap_to_kernel,omitempty"`
	// TAPPadded: frames from the kernel padded to 60 bytes (also in
	// TAPFromKernel); errors are failed reads and frames the kernel
	// refused.
	TAPPadded      uint64 `json:"tap_padded,omitempty"`
	TAPReadErrors  uint64 `json:"tap_read_errors,omitempty"`
	TAPWriteErrors uint64 `json:"tap_write_errors,omitempty"`
	// BuiltinGuest: the guest counters are the built-in echo guest's;
	// with an external front end (--vhost) they stay zero.
	BuiltinGuest   bool   `json:"builtin_guest"`
	IOMMUFaults    uint64 `json:"iommu_faults"`
	SimRxFIFOFull  uint64 `json:"sim_rx_fifo_full"`
	SimRxQueueOff  uint64 `json:"sim_rx_queue_off"`
	SimRxNotReady  uint64 `json:"sim_rx_not_ready"`
	SimTxNoLink    uint64 `json:"sim_tx_no_link"`
	SimTxDMAFaults uint64 `json:"sim_tx_dma_faults"`
	// SimTxMalformed: packets the simulated NIC dropped as malformed
	// (descriptors it cannot execute); the 82599 reports them nowhere.
	// SimRxDMAFaults: received frames dropped on an IOMMU fault.
	SimTxMalformed uint64 `json:"sim_tx_malformed"`
	SimRxDMAFaults uint64 `json:"sim_rx_dma_faults"`
}

// dropCauses names engine.Drops' fields as the telemetry keys them.
func dropCauses(d engine.Drops) map[string]uint64 {
	return map[string]uint64{
		"rx_nic_error": d.RxError, "rx_no_guest_buffer": d.RxNoGuestBuffer, "rx_too_big": d.RxTooBig,
		"rx_chain_unusable": d.RxChainUnusable, "rx_quiesce": d.RxQuiesce,
		"tx_bad_header": d.TxBadHeader, "tx_offload": d.TxOffload, "tx_no_copy_buffer": d.TxNoCopyBuffer,
		"tx_quiesce": d.TxQuiesce,
	}
}

func copyReasons(c engine.CopyReasons) map[string]uint64 {
	return map[string]uint64{
		"forced": c.Forced, "features": c.Features, "small_buffer": c.SmallBuffer,
		"layout": c.Layout, "no_guest_buffer": c.NoGuestBuffer,
	}
}

// Snapshot reads every counter of the appliance; command names the
// program ("run", "sim"). It runs per telemetry request or statistics
// period, never per packet.
func (a *Appliance) Snapshot(command string) Snapshot {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Snapshot{Command: command, PID: os.Getpid()}
	if !a.start.IsZero() {
		s.UptimeSeconds = time.Since(a.start).Seconds()
	}
	for _, n := range a.nics {
		if n.vf != nil {
			s.NICs = append(s.NICs, n.vfCounters())
			continue
		}
		st := n.port.Stats()
		var noDesc, queued uint64
		for _, q := range st.Queues {
			noDesc += q.RxDropped
			queued += q.RxPackets
		}
		nc := NICCounters{Name: n.name, RxPackets: st.RxPackets, RxBytes: st.RxBytes,
			TxPackets: st.TxPackets, TxBytes: st.TxBytes, TxSpoofed: st.TxSpoofed, RxMissed: st.RxMissed, RxNoDescriptor: noDesc, RxQueued: queued,
			RxCRCErrors: st.RxCRCErrors, RxUndersize: st.RxUndersize, RxFragments: st.RxFragments,
			RxOversize: st.RxOversize, RxJabbers: st.RxJabbers, RxLengthErrors: st.RxLengthErrs}
		if m, ok := n.dev.(filterCounter); ok {
			f := m.RxFilteredFrames()
			nc.RxFiltered = &f
		}
		s.NICs = append(s.NICs, nc)
	}
	for _, g := range a.guests {
		for _, p := range g.channels {
			s.Ports = append(s.Ports, portCounters(p))
		}
	}
	if a.runner != nil {
		for _, l := range a.runner.Stats() {
			s.Lcores = append(s.Lcores, LcoreCounters{Lcore: l.Lcore, CPU: l.CPU, BusyRounds: l.BusyRounds,
				IdleRounds: l.IdleRounds, BusySeconds: l.BusyTime.Seconds(), IdleSeconds: l.IdleTime.Seconds()})
		}
	}
	return s
}

func portCounters(p *engine.Channel) PortCounters {
	st := p.Stats()
	pc := PortCounters{Name: p.Name(), RxPackets: st.RxPackets, RxBytes: st.RxBytes,
		RxHarvested: st.RxHarvested, RxPending: st.RxPending,
		TxPackets: st.TxPackets, TxBytes: st.TxBytes,
		ZeroCopy: Dirs{st.RxZeroCopy, st.TxZeroCopy}, Copied: Dirs{st.RxCopied, st.TxCopied},
		CopyReasons: copyReasons(st.Copy), Drops: dropCauses(st.Drops),
		GuestErrors: st.GuestErrors, Restarts: st.Restarts, RxRewound: st.RxRewound, MACFilterErrors: st.MACFilterErrors,
		GuestMemoryFaults: st.GuestMemoryFaults, TxRARP: st.TxRARP}
	if mac, static := p.GuestMAC(); mac != ([6]byte{}) {
		pc.GuestMAC, pc.GuestMACSource = net.HardwareAddr(mac[:]).String(), "learned"
		if static {
			pc.GuestMACSource = "configured"
		}
	}
	return pc
}

// filterCounter is a NIC that counts the frames its address filters
// rejected, which the 82599 has no register for (the simulated one does).
type filterCounter interface{ RxFilteredFrames() uint64 }

// Totals are a snapshot's counters summed for one-line summaries.
type Totals struct {
	NICRx, NICTx, NICMissed, NICNoDescriptor uint64
	NICDiscarded                             uint64 // RxDiscarded summed
	GuestRx, GuestTx                         uint64
	ZeroCopy, Copied, Drops                  uint64
	BusySeconds, IdleSeconds                 float64
}

// Totals sums the snapshot's NICs, ports and lcores.
func (s *Snapshot) Totals() Totals {
	var t Totals
	for _, n := range s.NICs {
		t.NICRx += n.RxPackets
		t.NICTx += n.TxPackets
		t.NICMissed += n.RxMissed
		t.NICNoDescriptor += n.RxNoDescriptor
		t.NICDiscarded += n.RxDiscarded()
	}
	for _, p := range s.Ports {
		t.GuestRx += p.RxPackets
		t.GuestTx += p.TxPackets
		t.ZeroCopy += p.ZeroCopy.Rx + p.ZeroCopy.Tx
		t.Copied += p.Copied.Rx + p.Copied.Tx
		for _, n := range p.Drops {
			t.Drops += n
		}
	}
	for _, l := range s.Lcores {
		t.BusySeconds += l.BusySeconds
		t.IdleSeconds += l.IdleSeconds
	}
	return t
}
