//go:build soak

package soak

import (
	"fmt"
	"slices"
	"sort"
	"strings"
	"text/tabwriter"
	"time"
)

// ledger is one guest's frames from its zcnet's generator to the sink:
// how many passed each stage, and every frame lost on the way under the
// counter that names it.
type ledger struct {
	name string
	s    *snapshot

	sent, nicReceived, delivered, read, echoed, taken, onWire, intact uint64

	drops    []drop
	notes    []string // observations that are not failures
	problems []string // the books do not balance
}

// drop is a count of frames lost at one place for one reason, or in
// flight there when zcnet took its final snapshot.
type drop struct {
	where, name string
	n           uint64
	// inferred: computed from the balance of two stages (the counters
	// cannot tell), within bounds the ledger checks.
	inferred bool
	// inFlight: frames not lost but still on their way (measured).
	inFlight bool
}

func (l *ledger) drop(where, name string, n uint64) {
	l.drops = append(l.drops, drop{where: where, name: name, n: n})
}

// count is the drop at where under name (0 if the ledger lacks it).
func (l *ledger) count(where, name string) uint64 {
	for _, d := range l.drops {
		if d.where == where && d.name == name {
			return d.n
		}
	}
	return 0
}

func (l *ledger) problem(format string, args ...any) {
	l.problems = append(l.problems, l.name+": "+fmt.Sprintf(format, args...))
}

// reconcile balances every stage of a guest's path with zcnet's final
// counters (s) and the guest's own (g):
//
//	generator -> NIC:     sent = NIC received (GPRC) + NIC discards + filtered + receiver not ready
//	NIC:                  GPRC = into the port's RX queue (QPRC) + missed + no descriptor + RX DMA faults
//	NIC queue -> engine:  QPRC = harvested by the port + on the NIC's ring at the end
//	engine:               harvested = delivered + engine RX frame drops + waiting for guest buffers at the end
//	guest ring -> guest:  delivered = read + left unread when an instance ended + lost with truncated memory
//	guest:                read = echoed + no transmit buffer
//	guest -> engine:      echoed = taken + engine TX drops + left untaken when an instance ended + lost with truncated memory
//	engine -> wire:       taken = sent by the NIC + never sent when a port stopped (tx_quiesce) + simulated TX drops
//	wire -> sink:         sent by the NIC = received intact + bad checksums
//
// so that sent = received intact + every drop + the frames in flight at
// the final snapshot, each under its name. Every stage balances exactly
// with counted figures on both sides; the one inferred figure is what
// truncated guest memory took along, bounded by the ring entries it held.
func reconcile(name string, s *snapshot, g guestStats) *ledger {
	n, p, tr := s.NICs[0], s.Ports[0], s.Traffic
	l := &ledger{name: name, s: s, sent: tr.GeneratorSent, nicReceived: n.RxPackets, delivered: p.RxPackets,
		read: g.Read, echoed: g.Echoed, taken: p.TxPackets, onWire: n.TxPackets, intact: tr.SinkReceived}

	// Generator -> NIC.
	discards := []drop{{"NIC", "rx_crc_errors", n.RxCRCErrors, false, false}, {"NIC", "rx_undersize", n.RxUndersize, false, false},
		{"NIC", "rx_fragments", n.RxFragments, false, false}, {"NIC", "rx_oversize", n.RxOversize, false, false},
		{"NIC", "rx_jabbers", n.RxJabbers, false, false}, {"simulated NIC", "rx_filtered", n.RxFiltered, false, false},
		{"simulated NIC", "sim_rx_not_ready", tr.SimRxNotReady, false, false}}
	l.drops = append(l.drops, discards...)
	if in := n.RxPackets + sumDrops(discards); tr.GeneratorSent != in {
		l.problem("generator -> NIC: the generator sent %d frames; the NIC received %d and discarded %d = %d",
			tr.GeneratorSent, n.RxPackets, sumDrops(discards), in)
	}

	// The NIC: into the port's receive queue, or dropped.
	l.drop("NIC", "rx_missed (packet buffer full)", n.RxMissed)
	l.drop("NIC", "rx_no_descriptor", n.RxNoDescriptor)
	l.drop("simulated NIC", "sim_rx_dma_faults", tr.SimRxDMAFaults)
	if out := n.RxQueued + n.RxMissed + n.RxNoDescriptor + tr.SimRxDMAFaults; n.RxPackets != out {
		l.problem("NIC: received %d frames (GPRC); into the queue %d (QPRC) + missed %d + no descriptor %d + DMA faults %d = %d",
			n.RxPackets, n.RxQueued, n.RxMissed, n.RxNoDescriptor, tr.SimRxDMAFaults, out)
	}

	// NIC queue -> engine. The port harvests every completion each poll
	// unless its queue of frames waiting for guest buffers is full, so
	// frames left on the ring at the end are in flight only then.
	onRing := int64(n.RxQueued) - int64(p.RxHarvested)
	switch {
	case onRing < 0:
		l.problem("NIC queue -> engine: the port harvested %d frames, %d more than the NIC put into its queue (%d)",
			p.RxHarvested, -onRing, n.RxQueued)
	case onRing > 0 && p.RxPending == 0:
		l.problem("NIC queue -> engine: the NIC put %d frames into the port's queue, the port harvested %d: %d never harvested, with none waiting in the port (polling stopped before the traffic did, or the port gave written buffers back as empty)",
			n.RxQueued, p.RxHarvested, onRing)
	}
	if onRing >= 0 {
		l.drops = append(l.drops, drop{where: "NIC", name: "on the port's RX ring, not yet harvested", n: uint64(onRing), inFlight: true})
	}

	// The engine: every harvested frame delivered, dropped or waiting.
	rxDrops, txDrops := causes(p.Drops, true), causes(p.Drops, false)
	for _, c := range rxDrops {
		l.drop("engine", c, p.Drops[c])
	}
	l.drops = append(l.drops, drop{where: "engine", name: "rx_pending (waiting for guest buffers)", n: p.RxPending, inFlight: true})
	if out := p.RxPackets + sumKeys(p.Drops, rxDrops) + p.RxPending; p.RxHarvested != out {
		l.problem("engine: the port harvested %d frames; delivered %d + RX drops %d + waiting %d = %d: %d with no counter",
			p.RxHarvested, p.RxPackets, sumKeys(p.Drops, rxDrops), p.RxPending, out, int64(p.RxHarvested)-int64(out))
	}

	// The guest.
	l.drop("guest", "unread when an instance ended", g.UnreadAtEnd)
	if g.Read != g.Echoed+g.DroppedTxFull {
		l.problem("guest: read %d frames, echoed %d + no transmit buffer %d", g.Read, g.Echoed, g.DroppedTxFull)
	}
	l.drop("guest", "no transmit buffer (ring full)", g.DroppedTxFull)
	for _, c := range txDrops {
		if c != "tx_quiesce" {
			l.drop("engine", c, p.Drops[c])
		}
	}
	preSubmit := sumKeys(p.Drops, txDrops) - p.Drops["tx_quiesce"]
	l.drop("guest", "made available, never taken, when an instance ended", g.UnsentAtEnd)
	// What truncated instances took along: the rest of the delivered
	// frames nobody could read, the rest of the echoed ones nobody took.
	lostRx := int64(p.RxPackets) - int64(g.Read) - int64(g.UnreadAtEnd)
	lostTx := int64(g.Echoed) - int64(p.TxPackets) - int64(preSubmit) - int64(g.UnsentAtEnd)
	switch {
	case lostRx < 0:
		l.problem("guest ring -> guest: zcnet delivered %d frames, the guest read %d and found %d unread: %d more than delivered",
			p.RxPackets, g.Read, g.UnreadAtEnd, -lostRx)
	case lostTx < 0:
		l.problem("guest -> engine: the guest made %d frames available, %d found untaken; zcnet took %d and dropped %d before the NIC: %d more than made available (chains taken and never given back used)",
			g.Echoed, g.UnsentAtEnd, p.TxPackets, preSubmit, -lostTx)
	case g.Truncations == 0 && lostRx+lostTx != 0:
		l.problem("guest: %d delivered frames never read and %d echoed frames never taken or dropped, with no memory truncated",
			lostRx, lostTx)
	case uint64(lostRx+lostTx) > g.TruncatedRing:
		l.problem("guest: %d frames unaccounted for, more than the %d ring entries of the %d truncated instances could hold",
			lostRx+lostTx, g.TruncatedRing, g.Truncations)
	}
	if lostRx >= 0 && lostTx >= 0 {
		l.drops = append(l.drops, drop{where: "guest", name: "taken along by truncated memory", n: uint64(lostRx + lostTx), inferred: true})
	}

	// Engine -> wire: every packet handed to the NIC was sent, dropped by
	// the simulated NIC under a counter, or never sent when the port
	// stopped its queue (tx_quiesce counts only those).
	l.drop("engine", "tx_quiesce (never sent when a port stopped)", p.Drops["tx_quiesce"])
	l.drop("simulated NIC", "sim_tx_no_link", tr.SimTxNoLink)
	l.drop("simulated NIC", "sim_tx_dma_faults", tr.SimTxDMAFaults)
	l.drop("simulated NIC", "sim_tx_malformed", tr.SimTxMalformed)
	if out := n.TxPackets + p.Drops["tx_quiesce"] + tr.SimTxNoLink + tr.SimTxDMAFaults + tr.SimTxMalformed; p.TxPackets != out {
		l.problem("engine -> wire: the engine gave the NIC %d packets; sent %d + never sent %d (tx_quiesce) + no link %d + DMA faults %d + malformed %d = %d: %d with no counter",
			p.TxPackets, n.TxPackets, p.Drops["tx_quiesce"], tr.SimTxNoLink, tr.SimTxDMAFaults, tr.SimTxMalformed, out, int64(p.TxPackets)-int64(out))
	}
	if tr.SimTxMalformed != 0 {
		l.problem("engine -> wire: the NIC dropped %d packets as malformed: the engine must refuse (and count) what the NIC cannot send", tr.SimTxMalformed)
	}

	// Wire -> sink.
	l.drop("sink", "bad checksums", tr.SinkBad)
	if got := tr.SinkReceived + tr.SinkBad; n.TxPackets != got {
		l.problem("wire -> sink: the NIC sent %d frames, the sink recognised %d intact and %d with bad checksums",
			n.TxPackets, tr.SinkReceived, tr.SinkBad)
	}

	if total := tr.SinkReceived + sumDrops(l.drops); len(l.problems) == 0 && total != tr.GeneratorSent {
		l.problem("the generator sent %d frames; received intact %d + dropped or in flight %d = %d", tr.GeneratorSent, tr.SinkReceived, sumDrops(l.drops), total)
	}
	return l
}

// causes returns the engine's frame drop causes of one direction,
// sorted: rx_chain_unusable counts empty guest buffers, not frames.
func causes(m map[string]uint64, rx bool) []string {
	var keys []string
	for k := range m {
		if strings.HasPrefix(k, "rx_") == rx && k != "rx_chain_unusable" {
			keys = append(keys, k)
		}
	}
	sort.Strings(keys)
	return keys
}

func sumKeys(m map[string]uint64, keys []string) uint64 {
	var s uint64
	for _, k := range keys {
		s += m[k]
	}
	return s
}

func sumDrops(ds []drop) uint64 {
	var s uint64
	for _, d := range ds {
		s += d.n
	}
	return s
}

// --- the verdict -----------------------------------------------------------------

// Tolerances for the resources compared between the warm-up checkpoint
// and the end; both measure the same configuration (two baseline guests
// connected, traffic flowing), so a leak shows as growth proportional to
// the hundreds of sessions, memory tables and rings the chaos went
// through between them.
const (
	// goroutineSlack: zcnet starts short-lived goroutines (a dropped
	// session's closer, a notifier being replaced, the telemetry
	// connection) that may be alive in a dump; one leaked per session
	// would add hundreds.
	goroutineSlack = 2
	// anonSlackKiB, or anonSlackShare of the warm-up figure if larger:
	// the Go heap between collections (GOGC=100 lets it double before a
	// collection, and the scavenger returns freed pages to the kernel
	// over minutes), measured as the lowest of the samples at each
	// checkpoint. 16 MiB over ~1000 sessions still catches a leak of
	// 16 KiB per session.
	anonSlackKiB   = 16 << 10
	anonSlackShare = 0.10
)

// verdict lists what fails the soak.
func verdict(guests []*soakGuest, ledgers []*ledger, stats []guestStats, first, last figures) []string {
	var fails []string
	for i, l := range ledgers {
		fails = append(fails, l.problems...)
		if f := l.s.Traffic.IOMMUFaults; f != 0 {
			fails = append(fails, fmt.Sprintf("%s: the simulated NIC recorded %d IOMMU faults: DMA outside the guest's mapped memory", l.name, f))
		}
		st := stats[i]
		if st.RxErrors != 0 {
			fails = append(fails, fmt.Sprintf("%s: %d received frames or used entries the guest could not parse, first: %s", l.name, st.RxErrors, st.FirstRxError))
		}
		fails = append(fails, st.Unexpected...)
		if c := guests[i].zcnet.stderr.crashLines(); len(c) > 0 {
			fails = append(fails, fmt.Sprintf("%s: zcnet's stderr has crash lines:\n%s", l.name, strings.Join(c, "\n")))
		}
	}
	for i, g := range guests {
		a, b := first.zcnet[i], last.zcnet[i]
		if b.FDs > a.FDs {
			fails = append(fails, fmt.Sprintf("%s: open descriptors grew from %d to %d", g.zcnet.name, a.FDs, b.FDs))
		}
		if b.GuestMaps != a.GuestMaps {
			fails = append(fails, fmt.Sprintf("%s: guest memory mappings went from %d to %d with the same guests connected", g.zcnet.name, a.GuestMaps, b.GuestMaps))
		}
		if b.Goroutines > a.Goroutines+goroutineSlack {
			fails = append(fails, fmt.Sprintf("%s: goroutines grew from %d to %d (slack %d)", g.zcnet.name, a.Goroutines, b.Goroutines, goroutineSlack))
		}
		if slack := anonSlack(a); b.AnonKiB > a.AnonKiB+slack {
			fails = append(fails, fmt.Sprintf("%s: anonymous resident memory grew from %d to %d KiB (slack %d KiB)", g.zcnet.name, a.AnonKiB, b.AnonKiB, slack))
		}
	}
	if a, b := first.self, last.self; b.Goroutines > a.Goroutines+goroutineSlack || b.FDs > a.FDs {
		fails = append(fails, fmt.Sprintf("the soak's guests: goroutines %d -> %d, descriptors %d -> %d", a.Goroutines, b.Goroutines, a.FDs, b.FDs))
	}
	return fails
}

func anonSlack(f procFigures) uint64 {
	return max(anonSlackKiB, uint64(float64(f.AnonKiB)*anonSlackShare))
}

// --- the report --------------------------------------------------------------------

// report is the soak's figures as tables.
func report(guests []*soakGuest, ledgers []*ledger, stats []guestStats, first, last figures, elapsed time.Duration) string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n=== zcnet soak: %v, two guests, each on its own simulated 82599 port ===\n", elapsed.Round(time.Second))
	w := tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := func(title string) {
		fmt.Fprintf(w, "%s\t", title)
		for _, g := range guests {
			fmt.Fprintf(w, "%s\t", g.name)
		}
		fmt.Fprintln(w, "total\t")
	}
	row := func(label string, get func(i int) uint64) {
		fmt.Fprintf(w, "%s\t", label)
		var sum uint64
		for i := range guests {
			v := get(i)
			sum += v
			fmt.Fprintf(w, "%d\t", v)
		}
		fmt.Fprintf(w, "%d\t\n", sum)
	}

	fmt.Fprintln(&b, "\nframes")
	header("")
	row("generator sent (wire -> guest)", func(i int) uint64 { return ledgers[i].sent })
	row("NIC received (GPRC)", func(i int) uint64 { return ledgers[i].nicReceived })
	row("  into the port's RX queue (QPRC)", func(i int) uint64 { return ledgers[i].s.NICs[0].RxQueued })
	row("harvested by the port", func(i int) uint64 { return ledgers[i].s.Ports[0].RxHarvested })
	row("delivered into guest rings", func(i int) uint64 { return ledgers[i].delivered })
	row("  zero-copy", func(i int) uint64 { return ledgers[i].s.Ports[0].ZeroCopy.Rx })
	row("  copied", func(i int) uint64 { return ledgers[i].s.Ports[0].Copied.Rx })
	row("read by the guests", func(i int) uint64 { return ledgers[i].read })
	row("echoed by the guests (guest -> wire)", func(i int) uint64 { return ledgers[i].echoed })
	row("taken by zcnet to the NIC", func(i int) uint64 { return ledgers[i].taken })
	row("  zero-copy", func(i int) uint64 { return ledgers[i].s.Ports[0].ZeroCopy.Tx })
	row("  copied", func(i int) uint64 { return ledgers[i].s.Ports[0].Copied.Tx })
	row("sent by the NIC", func(i int) uint64 { return ledgers[i].onWire })
	row("received intact by the sink", func(i int) uint64 { return ledgers[i].intact })
	fmt.Fprintln(w, "dropped (or in flight), by counter:\t")
	// Every ledger lists the same drops, but an inferred one is missing
	// where its stage did not balance: rows go by name.
	var rows []drop
	for _, l := range ledgers {
		for _, d := range l.drops {
			if !slices.ContainsFunc(rows, func(r drop) bool { return r.where == d.where && r.name == d.name }) {
				rows = append(rows, d)
			}
		}
	}
	for _, d := range rows {
		label := fmt.Sprintf("  %s: %s", d.where, d.name)
		if d.inferred {
			label += " [inferred]"
		}
		if d.inFlight {
			label += " [in flight at the end]"
		}
		row(label, func(i int) uint64 { return ledgers[i].count(d.where, d.name) })
	}
	row("received intact + dropped + in flight", func(i int) uint64 { return ledgers[i].intact + sumDrops(ledgers[i].drops) })
	w.Flush()
	for _, l := range ledgers {
		status := "every frame accounted for"
		if len(l.problems) > 0 {
			status = fmt.Sprintf("%d imbalances (below)", len(l.problems))
		}
		fmt.Fprintf(&b, "%s: %s; copy reasons %s\n", l.name, status, nonZero(l.s.Ports[0].CopyReasons))
	}

	fmt.Fprintln(&b, "\nsessions")
	header("")
	row("guest instances booted", func(i int) uint64 { return uint64(stats[i].Instances) })
	row("reconnects of the same instance", func(i int) uint64 { return uint64(stats[i].Resumes) })
	row("sessions zcnet dropped unasked", func(i int) uint64 { return uint64(stats[i].SessionsDropped) })
	row("guest memory truncations", func(i int) uint64 { return uint64(stats[i].Truncations) })
	row("  their ring entries (bound on frames taken along)", func(i int) uint64 { return stats[i].TruncatedRing })
	row("zcnet guest_memory_faults", func(i int) uint64 { return ledgers[i].s.Ports[0].GuestMemoryFaults })
	row("zcnet guest_errors (broken chains)", func(i int) uint64 { return ledgers[i].s.Ports[0].GuestErrors })
	row("zcnet rx_chain_unusable (buffers returned empty)", func(i int) uint64 { return ledgers[i].s.Ports[0].Drops["rx_chain_unusable"] })
	row("zcnet port restarts", func(i int) uint64 { return ledgers[i].s.Ports[0].Restarts })
	row("IOMMU faults", func(i int) uint64 { return ledgers[i].s.Traffic.IOMMUFaults })
	w.Flush()

	fmt.Fprintln(&b, "\nactions (misbehaviours marked *), and what zcnet did")
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', 0)
	fmt.Fprintf(w, "action\t")
	for _, g := range guests {
		fmt.Fprintf(w, "%s\t", g.name)
	}
	fmt.Fprintln(w, "outcomes (both guests)")
	kinds := map[string]bool{}
	for _, st := range stats {
		for k := range st.Actions {
			kinds[k] = true
		}
		for k := range st.Outcomes {
			kinds[k] = true
		}
	}
	for _, a := range actions {
		if !kinds[a.kind] {
			kinds[a.kind] = true // listed with zeros: never picked
		}
	}
	names := make([]string, 0, len(kinds))
	for k := range kinds {
		names = append(names, k)
	}
	sort.Slice(names, func(i, j int) bool {
		mi, mj := isMisbehaviour(names[i]), isMisbehaviour(names[j])
		if mi != mj {
			return !mi
		}
		return names[i] < names[j]
	})
	var injected [2]int
	for _, k := range names {
		mark := " "
		if isMisbehaviour(k) {
			mark = "*"
		}
		fmt.Fprintf(w, "%s %s\t", mark, k)
		outcomes := map[string]uint64{}
		for i, st := range stats {
			fmt.Fprintf(w, "%d\t", st.Actions[k])
			if isMisbehaviour(k) && i < len(injected) {
				injected[i] += st.Actions[k]
			}
			for o, n := range st.Outcomes[k] {
				outcomes[o] += uint64(n)
			}
		}
		fmt.Fprintln(w, nonZero(outcomes))
	}
	fmt.Fprintf(w, "misbehaviours injected\t%d\t%d\t\n", injected[0], injected[1])
	w.Flush()

	fmt.Fprintf(&b, "\nresources: at the warm-up checkpoint -> at the end (same guests connected)\n")
	w = tabwriter.NewWriter(&b, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "process\tdescriptors\tgoroutines\tthreads\tRSS KiB\tanonymous KiB\tshmem KiB\tguest maps\t")
	for i, g := range guests {
		a, z := first.zcnet[i], last.zcnet[i]
		fmt.Fprintf(w, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t\n", g.zcnet.name,
			pair(a.FDs, z.FDs), pair(a.Goroutines, z.Goroutines), pair(a.Threads, z.Threads),
			pair(a.RSSKiB, z.RSSKiB), pair(a.AnonKiB, z.AnonKiB), pair(a.ShmemKiB, z.ShmemKiB), pair(a.GuestMaps, z.GuestMaps))
		fmt.Fprintf(w, "  tolerance\t+0\t+%d\t-\t-\t+%d\t-\t+0\t\n", goroutineSlack, anonSlack(a))
	}
	a, z := first.self, last.self
	fmt.Fprintf(w, "soak (guests)\t%s\t%s\t%s\t%s\t%s\t%s\t-\t\n",
		pair(a.FDs, z.FDs), pair(a.Goroutines, z.Goroutines), pair(a.Threads, z.Threads),
		pair(a.RSSKiB, z.RSSKiB), pair(a.AnonKiB, z.AnonKiB), pair(a.ShmemKiB, z.ShmemKiB))
	w.Flush()

	var notes []string
	for _, l := range ledgers {
		notes = append(notes, l.notes...)
	}
	if len(notes) > 0 {
		fmt.Fprintf(&b, "\nnotes\n  %s\n", strings.Join(notes, "\n  "))
	}
	if fails := verdict(guests, ledgers, stats, first, last); len(fails) > 0 {
		fmt.Fprintf(&b, "\nFAILED (%d)\n  %s\n", len(fails), strings.Join(fails, "\n  "))
	} else {
		fmt.Fprintln(&b, "\nPASS: every frame accounted for, nothing grew, no IOMMU fault, every misbehaviour met as promised")
	}
	return b.String()
}

func pair[T int | uint64](a, b T) string { return fmt.Sprintf("%d -> %d", a, b) }

// nonZero lists a map's non-zero counts as "name n, ...".
func nonZero[V int | uint64](m map[string]V) string {
	var parts []string
	for k, v := range m {
		if v != 0 {
			parts = append(parts, fmt.Sprintf("%s %d", k, v))
		}
	}
	slices.Sort(parts)
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, ", ")
}
