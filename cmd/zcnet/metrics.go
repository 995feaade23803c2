package main

import (
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.uber.org/zap"

	"github.com/zcnet/zcnet/appliance"
)

// The Prometheus endpoint (--metrics-addr): prometheus/client_golang writes
// the exposition (label escaping, the text format and OpenMetrics, chosen
// by the scraper's Accept header, compression), from a registry of this
// instance's own holding the snapshot collector below and the Go runtime
// and process collectors (heap, GC, goroutines, threads, RSS, CPU, fds).

// newMetricsHandler serves /metrics: one snapshot per scrape.
func newMetricsHandler(log *zap.Logger, snap func() appliance.Snapshot) http.Handler {
	reg := prometheus.NewRegistry()
	reg.MustRegister(
		snapshotCollector{snap: snap},
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
	)
	opts := promhttp.HandlerOpts{
		// A metric that fails (two ports of one name, say) is left out
		// and logged; the rest of the scrape is still served.
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	}
	if l, err := zap.NewStdLogAt(log.Named("metrics"), zap.WarnLevel); err == nil {
		opts.ErrorLog = l
	}
	return promhttp.HandlerFor(reg, opts)
}

// metric is one metric family's description and type.
type metric struct {
	desc *prometheus.Desc
	kind prometheus.ValueType
}

func counter(name, help string, labels ...string) metric {
	return metric{prometheus.NewDesc(name, help, labels, nil), prometheus.CounterValue}
}

func gauge(name, help string, labels ...string) metric {
	return metric{prometheus.NewDesc(name, help, labels, nil), prometheus.GaugeValue}
}

// field is a metric with a sample per NIC (or port), read by get.
type field[T any] struct {
	metric
	get func(*T) uint64
}

var (
	uptimeMetric = gauge("zcnet_uptime_seconds", "Seconds since the data path started.")

	nicMetrics = []field[appliance.NICCounters]{
		{counter("zcnet_nic_rx_packets_total", "Good packets the NIC received.", "nic"),
			func(n *appliance.NICCounters) uint64 { return n.RxPackets }},
		{counter("zcnet_nic_tx_packets_total", "Good packets the NIC transmitted.", "nic"),
			func(n *appliance.NICCounters) uint64 { return n.TxPackets }},
		{counter("zcnet_nic_rx_bytes_total", "Good octets the NIC received.", "nic"),
			func(n *appliance.NICCounters) uint64 { return n.RxBytes }},
		{counter("zcnet_nic_tx_bytes_total", "Good octets the NIC transmitted.", "nic"),
			func(n *appliance.NICCounters) uint64 { return n.TxBytes }},
		{counter("zcnet_nic_rx_missed_total", "Frames dropped because the NIC packet buffer was full.", "nic"),
			func(n *appliance.NICCounters) uint64 { return n.RxMissed }},
		{counter("zcnet_nic_rx_no_descriptor_total", "Frames dropped because an RX queue had no free descriptor.", "nic"),
			func(n *appliance.NICCounters) uint64 { return n.RxNoDescriptor }},
		{counter("zcnet_nic_rx_queued_total", "Frames the NIC wrote into its receive queues (QPRC summed).", "nic"),
			func(n *appliance.NICCounters) uint64 { return n.RxQueued }},
		{counter("zcnet_nic_rx_length_errors_total", "Undersize and oversize frames (RLEC; the same frames as the undersize and oversize discards).", "nic"),
			func(n *appliance.NICCounters) uint64 { return n.RxLengthErrors }},
	}
	nicDiscardedMetric = counter("zcnet_nic_rx_discarded_total",
		"Frames the NIC discarded before its packet buffer, by cause (filtered: simulated NIC only).", "nic", "cause")

	portMetrics = []field[appliance.PortCounters]{
		{counter("zcnet_port_rx_packets_total", "Frames delivered from the wire to the guest.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.RxPackets }},
		{counter("zcnet_port_rx_harvested_total", "Frames the port took from its NIC receive queue: delivered, dropped or pending.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.RxHarvested }},
		{gauge("zcnet_port_rx_pending", "Frames waiting in host buffers for the guest to post receive buffers.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.RxPending }},
		{counter("zcnet_port_tx_packets_total", "Frames sent from the guest to the wire.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.TxPackets }},
		{counter("zcnet_port_rx_bytes_total", "Bytes delivered from the wire to the guest.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.RxBytes }},
		{counter("zcnet_port_tx_bytes_total", "Bytes sent from the guest to the wire.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.TxBytes }},
		{counter("zcnet_port_guest_errors_total", "Broken guest descriptor chains.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.GuestErrors }},
		{counter("zcnet_port_rx_rewound_total", "Empty guest receive buffers given back by rewinding the ring when the port stopped.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.RxRewound }},
		{counter("zcnet_port_guest_memory_faults_total", "Accesses to guest memory that faulted because the front end truncated it; each dropped the guest's session.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.GuestMemoryFaults }},
		{counter("zcnet_port_tx_rarp_total", "RARPs sent from the guest's MAC at its front end's request after a live migration.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.TxRARP }},
		{counter("zcnet_port_restarts_total", "Times the port stopped its NIC queues and took guest buffers back.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.Restarts }},
		{counter("zcnet_port_mac_filter_errors_total", "Guest MACs the NIC's address filter refused.", "port"),
			func(p *appliance.PortCounters) uint64 { return p.MACFilterErrors }},
	}
	portGuestMACMetric = gauge("zcnet_port_guest_mac_info",
		"The guest MAC the NIC accepts for the port, and whether it was configured or learned.", "port", "mac", "source")
	portFramesMetric = counter("zcnet_port_frames_total",
		"Frames moved, by direction and by whether they were copied.", "port", "dir", "path")
	portCopiesMetric = counter("zcnet_port_copies_total", "Frames copied through host buffers, by reason.", "port", "reason")
	portDropsMetric  = counter("zcnet_port_drops_total", "Frames dropped by the engine, by cause.", "port", "cause")

	lcoreBusyMetric = counter("zcnet_lcore_busy_seconds_total", "Time an lcore spent in rounds that moved packets.", "lcore", "cpu")
	lcoreIdleMetric = counter("zcnet_lcore_idle_seconds_total", "Time an lcore spent in rounds that found nothing.", "lcore", "cpu")

	simSentMetric     = counter("zcnet_sim_generator_sent_total", "Frames the simulated traffic generator sent.")
	simReceivedMetric = counter("zcnet_sim_sink_received_total", "Generator probes the verifying sink received intact.")
	simLostMetric     = gauge("zcnet_sim_sink_lost", "Probe sequence numbers the sink has not seen.")
	simTAPMetric      = counter("zcnet_sim_tap_frames_total",
		"Frames through the TAP, by direction (from or to the kernel) and what became of them.", "dir", "result")
	simIOMMUMetric = counter("zcnet_sim_iommu_faults_total", "Device accesses outside every IOMMU mapping.")
)

// snapshotCollector turns one appliance.Snapshot per scrape into constant
// metrics.
type snapshotCollector struct {
	snap func() appliance.Snapshot
}

func (snapshotCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, m := range nicMetrics {
		ch <- m.desc
	}
	for _, m := range portMetrics {
		ch <- m.desc
	}
	for _, m := range []metric{uptimeMetric, nicDiscardedMetric, portGuestMACMetric, portFramesMetric,
		portCopiesMetric, portDropsMetric, lcoreBusyMetric, lcoreIdleMetric,
		simSentMetric, simReceivedMetric, simLostMetric, simTAPMetric, simIOMMUMetric} {
		ch <- m.desc
	}
}

func (c snapshotCollector) Collect(ch chan<- prometheus.Metric) {
	s := c.snap()
	emit := func(m metric, v float64, labels ...string) {
		ch <- constMetric(m, v, labels...)
	}
	emit(uptimeMetric, s.UptimeSeconds)

	for i := range s.NICs {
		n := &s.NICs[i]
		for _, m := range nicMetrics {
			emit(m.metric, float64(m.get(n)), n.Name)
		}
		for cause, v := range n.Discards() {
			emit(nicDiscardedMetric, float64(v), n.Name, cause)
		}
	}

	for i := range s.Ports {
		p := &s.Ports[i]
		for _, m := range portMetrics {
			emit(m.metric, float64(m.get(p)), p.Name)
		}
		if p.GuestMAC != "" {
			emit(portGuestMACMetric, 1, p.Name, p.GuestMAC, p.GuestMACSource)
		}
		emit(portFramesMetric, float64(p.ZeroCopy.Rx), p.Name, "rx", "zero_copy")
		emit(portFramesMetric, float64(p.ZeroCopy.Tx), p.Name, "tx", "zero_copy")
		emit(portFramesMetric, float64(p.Copied.Rx), p.Name, "rx", "copied")
		emit(portFramesMetric, float64(p.Copied.Tx), p.Name, "tx", "copied")
		for reason, v := range p.CopyReasons {
			emit(portCopiesMetric, float64(v), p.Name, reason)
		}
		for cause, v := range p.Drops {
			emit(portDropsMetric, float64(v), p.Name, cause)
		}
	}

	for _, l := range s.Lcores {
		lcore, cpu := strconv.Itoa(l.Lcore), strconv.Itoa(l.CPU)
		emit(lcoreBusyMetric, l.BusySeconds, lcore, cpu)
		emit(lcoreIdleMetric, l.IdleSeconds, lcore, cpu)
	}

	if t := s.Traffic; t != nil {
		emit(simSentMetric, float64(t.GeneratorSent))
		emit(simReceivedMetric, float64(t.SinkReceived))
		emit(simLostMetric, float64(t.SinkLost))
		emit(simTAPMetric, float64(t.TAPFromKernel), "from_kernel", "delivered")
		emit(simTAPMetric, float64(t.TAPPadded), "from_kernel", "padded")
		emit(simTAPMetric, float64(t.TAPReadErrors), "from_kernel", "read_error")
		emit(simTAPMetric, float64(t.TAPToKernel), "to_kernel", "delivered")
		emit(simTAPMetric, float64(t.TAPWriteErrors), "to_kernel", "refused")
		emit(simIOMMUMetric, float64(t.IOMMUFaults))
	}
}

// constMetric is m's sample v. Label values must be UTF-8 and a port's
// name holds its vhost-user socket path, which need not be: invalid bytes
// become U+FFFD. It never panics (prometheus.MustNewConstMetric would, and
// Collect runs on a goroutine of the registry's, so the panic would take
// the data path down): a metric it cannot build fails the scrape's error
// log instead, and the rest of the scrape is served.
func constMetric(m metric, v float64, labels ...string) prometheus.Metric {
	for i, l := range labels {
		if !utf8.ValidString(l) {
			labels[i] = strings.ToValidUTF8(l, "\uFFFD")
		}
	}
	pm, err := prometheus.NewConstMetric(m.desc, m.kind, v, labels...)
	if err != nil {
		return prometheus.NewInvalidMetric(m.desc, err)
	}
	return pm
}
