package main

import (
	"encoding/json"
	"fmt"
	"io"
	"path/filepath"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/control"
)

// defaultControlPath is the control socket beside the telemetry socket.
func defaultControlPath() string {
	return filepath.Join(filepath.Dir(defaultTelemetryPath()), "control.sock")
}

// newPortCommand is `zcnet port add|del|list|show`: guests of a running
// `zcnet run` changed over its control socket, as ovs-vsctl changes
// ovs-vswitchd's ports.
func newPortCommand() *cobra.Command {
	var socket string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "port",
		Short: "Add, remove, list and show the guests of a running zcnet run",
		Long: `port talks to a running zcnet run over its control socket (--control).
Guests come and go without disturbing the others: adding one joins it to a
free guest slot of a NIC port and starts serving its vhost-user socket;
removing one stops its NIC queues, gives every buffer back, unmaps its
memory and closes its socket.`,
	}
	cmd.PersistentFlags().StringVar(&socket, "control", defaultControlPath(), "control socket of the instance")
	cmd.PersistentFlags().BoolVar(&asJSON, "json", false, "print the answer as JSON")
	print := func(out io.Writer, resp control.Response, text func(io.Writer)) error {
		if asJSON {
			enc := json.NewEncoder(out)
			enc.SetIndent("", "  ")
			return enc.Encode(resp)
		}
		text(out)
		return nil
	}

	var g appliance.GuestSpec
	var nic string
	add := &cobra.Command{
		Use:   "add SOCKET",
		Short: "Serve a new guest on vhost-user socket SOCKET",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			g.Socket = args[0]
			resp, err := control.Call(socket, control.Request{Command: control.CommandPortAdd, NIC: nic, Guest: &g})
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), resp, func(w io.Writer) { printGuests(w, []appliance.GuestInfo{*resp.Guest}) })
		},
	}
	add.Flags().StringVar(&nic, "nic", "", "NIC port (its --pci address) whose free guest slot to use (default: the first with one)")
	add.Flags().BoolVar(&g.Client, "client", false, "connect to SOCKET (QEMU server=on) instead of listening on it")
	add.Flags().StringVar(&g.MAC, "mac", "", "the guest's MAC (default: learned from its frames)")
	add.Flags().Uint16Var(&g.VLAN, "vlan", 0, "put the guest on this access VLAN (1-4094; the NIC tags and untags its frames)")
	var migration bool
	add.Flags().BoolVar(&migration, "migration", true, "let QEMU live-migrate the guest (dirty logging, SEND_RARP); --migration=false refuses it")
	add.PreRun = func(cmd *cobra.Command, _ []string) {
		if cmd.Flags().Changed("migration") {
			g.Migration = &migration
		}
	}
	add.Flags().BoolVar(&g.Trusted, "trusted", false, "let the guest change its MAC and send from other addresses (default: a configured MAC is fixed and, on a shared NIC port, anything else is dropped)")
	add.Flags().StringVar(&g.MemLimit, "mem-limit", "", "most guest memory zcnet may map and pin for it, e.g. 16G")
	add.Flags().StringVar(&g.Mode, "mode", "", "mode of the socket zcnet creates (default 0600)")
	add.Flags().StringVar(&g.Group, "group", "", "group of the socket zcnet creates (e.g. kvm)")

	del := &cobra.Command{
		Use:   "del SOCKET",
		Short: "Stop serving the guest on SOCKET",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := control.Call(socket, control.Request{Command: control.CommandPortDel, Socket: args[0]})
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), resp, func(w io.Writer) { fmt.Fprintf(w, "removed %s\n", args[0]) })
		},
	}
	list := &cobra.Command{
		Use:   "list",
		Short: "List the NIC ports and their guests",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := control.Call(socket, control.Request{Command: control.CommandPortList})
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), resp, func(w io.Writer) {
				tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NIC\tMAC\tGUESTS\tQUEUE PAIRS PER GUEST")
				for _, n := range resp.NICs {
					fmt.Fprintf(tw, "%s\t%s\t%d of %d\t%d\n", n.Name, n.MAC, n.Guests, n.MaxGuests, n.QueuePairs)
				}
				tw.Flush()
				fmt.Fprintln(w)
				printGuests(w, resp.Guests)
			})
		},
	}
	show := &cobra.Command{
		Use:   "show SOCKET",
		Short: "Show the guest on SOCKET and its counters",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := control.Call(socket, control.Request{Command: control.CommandPortShow, Socket: args[0]})
			if err != nil {
				return err
			}
			return print(cmd.OutOrStdout(), resp, func(w io.Writer) {
				printGuests(w, []appliance.GuestInfo{*resp.Guest})
				fmt.Fprintln(w)
				printPortTable(w, resp.Ports)
			})
		},
	}
	cmd.AddCommand(add, del, list, show)
	return cmd
}

func printGuests(w io.Writer, gs []appliance.GuestInfo) {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SOCKET\tMODE\tNIC\tQUEUES\tLCORES\tCONNECTED\tMAC")
	for _, g := range gs {
		mac := g.MAC
		if mac == "" {
			mac = "(not yet learned)"
		} else {
			mac += " (" + g.MACSource + ")"
		}
		if g.VLAN != 0 {
			mac += fmt.Sprintf(", vlan %d", g.VLAN)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%v\t%s\n", g.Socket, g.Mode, g.NIC, ints(g.Queues), ints(g.Lcores), g.Connected, mac)
	}
	tw.Flush()
}

func ints(v []int) string {
	s := make([]string, len(v))
	for i, n := range v {
		s[i] = fmt.Sprint(n)
	}
	return strings.Join(s, ",")
}

// newReloadCommand is `zcnet reload`: the running instance re-reads its
// --config file and applies the difference, as on SIGHUP.
func newReloadCommand() *cobra.Command {
	var socket string
	cmd := &cobra.Command{
		Use:   "reload",
		Short: "Have a running zcnet run re-read its --config file and apply the difference (as SIGHUP does)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := control.Call(socket, control.Request{Command: control.CommandReload})
			for _, c := range resp.Changes {
				fmt.Fprintln(cmd.OutOrStdout(), c)
			}
			if err == nil && len(resp.Changes) == 0 {
				fmt.Fprintln(cmd.OutOrStdout(), "nothing changed")
			}
			return err
		},
	}
	cmd.Flags().StringVar(&socket, "control", defaultControlPath(), "control socket of the instance")
	return cmd
}
