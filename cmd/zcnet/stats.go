package main

import (
	"encoding/json"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/zcnet/zcnet/appliance"
)

func newStatsCommand() *cobra.Command {
	var socket string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "stats",
		Short: "Print the counters of a running zcnet run or zcnet sim",
		Long: `stats reads one snapshot of every counter from a running instance over its
telemetry socket (zcnet run/sim --telemetry) and prints it as tables, or as
the JSON the socket serves with --json.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			s, err := readTelemetry(socket)
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				return enc.Encode(s)
			}
			printStatsTables(cmd.OutOrStdout(), &s)
			return nil
		},
	}
	cmd.Flags().StringVar(&socket, "socket", defaultTelemetryPath(), "telemetry socket of the instance")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the snapshot as JSON")
	return cmd
}

// printStatsTables prints a snapshot as aligned tables: NICs, channels,
// lcores and, for zcnet sim, the simulated wire.
func printStatsTables(out io.Writer, s *appliance.Snapshot) {
	fmt.Fprintf(out, "zcnet %s, pid %d, up %.1fs\n\n", s.Command, s.PID, s.UptimeSeconds)
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "NIC\trx packets\ttx packets\trx bytes\ttx bytes\tmissed\tno descriptor\t")
	for _, n := range s.NICs {
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t\n", n.Name, n.RxPackets, n.TxPackets, n.RxBytes, n.TxBytes, n.RxMissed, n.RxNoDescriptor)
	}
	w.Flush()
	fmt.Fprintln(out)
	// What the MAC discarded; "-" where the NIC cannot count it (the
	// 82599 has no counter for frames its address filters reject).
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "NIC discarded\tcrc errors\tundersize\tfragments\toversize\tjabbers\tlength errors\tfiltered\t")
	for _, n := range s.NICs {
		filtered := "-"
		if n.RxFiltered != nil {
			filtered = fmt.Sprint(*n.RxFiltered)
		}
		fmt.Fprintf(w, "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t\n", n.Name, n.RxCRCErrors, n.RxUndersize, n.RxFragments,
			n.RxOversize, n.RxJabbers, n.RxLengthErrors, filtered)
	}
	w.Flush()
	fmt.Fprintln(out)
	printPortTable(out, s.Ports)
	fmt.Fprintln(out)
	w = tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "lcore\tcpu\tbusy rounds\tidle rounds\tbusy %\t")
	for _, l := range s.Lcores {
		busy := 0.0
		if t := l.BusySeconds + l.IdleSeconds; t > 0 {
			busy = 100 * l.BusySeconds / t
		}
		fmt.Fprintf(w, "%d\t%d\t%d\t%d\t%.1f\t\n", l.Lcore, l.CPU, l.BusyRounds, l.IdleRounds, busy)
	}
	w.Flush()
	if t := s.Traffic; t != nil {
		fmt.Fprintf(out, "\nsimulated wire: generator sent %d, sink received %d, lost %d, bad checksums %d; IOMMU faults %d\n",
			t.GeneratorSent, t.SinkReceived, t.SinkLost, t.SinkBad, t.IOMMUFaults)
		if t.TAPFromKernel+t.TAPToKernel+t.TAPReadErrors+t.TAPWriteErrors > 0 {
			fmt.Fprintln(out, tapLine(t))
		}
		if t.BuiltinGuest {
			fmt.Fprintf(out, "built-in guest: echoed %d of %d, dropped %d\n", t.GuestTx, t.GuestRx, t.GuestDropped)
		}
	}
}

// printPortTable prints the guest ports' counters, one row per queue pair
// (a channel of the engine), and below it every nonzero drop and copy
// cause.
func printPortTable(out io.Writer, ports []appliance.PortCounters) {
	w := tabwriter.NewWriter(out, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(w, "port\tguest MAC\tto guest\tfrom guest\tzero-copy rx\tzero-copy tx\tcopied rx\tcopied tx\tdrops\tguest errors\trestarts\t")
	for _, p := range ports {
		var drops uint64
		for _, n := range p.Drops {
			drops += n
		}
		mac := "(not seen yet)"
		if p.GuestMAC != "" {
			mac = p.GuestMAC + " " + p.GuestMACSource
		}
		fmt.Fprintf(w, "%s\t%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t\n", p.Name, mac, p.RxPackets, p.TxPackets,
			p.ZeroCopy.Rx, p.ZeroCopy.Tx, p.Copied.Rx, p.Copied.Tx, drops, p.GuestErrors, p.Restarts)
	}
	w.Flush()
	for _, p := range ports {
		if p.GuestMemoryFaults > 0 {
			fmt.Fprintf(out, "  %s: guest memory went away under the data path %d times (the front end truncated it); each dropped the guest's session\n", p.Name, p.GuestMemoryFaults)
		}
		if p.MACFilterErrors > 0 {
			fmt.Fprintf(out, "  %s: the NIC's filter refused %d guest MACs (frames to them are dropped by the NIC)\n", p.Name, p.MACFilterErrors)
		}
		for _, k := range sortedKeys(p.Drops) {
			if n := p.Drops[k]; n > 0 {
				fmt.Fprintf(out, "  %s: dropped %s %d\n", p.Name, k, n)
			}
		}
		for _, k := range sortedKeys(p.CopyReasons) {
			if n := p.CopyReasons[k]; n > 0 {
				fmt.Fprintf(out, "  %s: copied (%s) %d\n", p.Name, k, n)
			}
		}
	}
}
