package main

import (
	"errors"
	"fmt"
	"os"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/zcnet/zcnet/vfio"
)

func newBindCommand(a *app) *cobra.Command {
	var driver string
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "bind PCI-ADDRESS...",
		Short: "Hand PCI functions to vfio-pci so zcnet can drive them",
		Long: `bind releases each function from its kernel driver (ixgbe, ixgbevf) and binds
it to vfio-pci through driver_override, as dpdk-devbind.py --bind=vfio-pci does.
Every function in the same IOMMU group must be bound (or unbound) for VFIO to
accept the group.`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBind(a, cmd, args, dryRun, func(b *vfio.Binder, addr string) ([]vfio.SysfsWrite, error) {
				return b.Bind(addr, driver)
			})
		},
	}
	cmd.Flags().StringVar(&driver, "driver", "vfio-pci", "driver to bind to")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the sysfs writes instead of doing them")
	return cmd
}

func newUnbindCommand(a *app) *cobra.Command {
	var dryRun bool
	cmd := &cobra.Command{
		Use:   "unbind PCI-ADDRESS...",
		Short: "Give PCI functions back to their kernel driver",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runBind(a, cmd, args, dryRun, (*vfio.Binder).Unbind)
		},
	}
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "print the sysfs writes instead of doing them")
	return cmd
}

// runBind applies op to every address, printing the sysfs writes made (or,
// in a dry run, those that would be made).
func runBind(a *app, cmd *cobra.Command, addrs []string, dryRun bool,
	op func(*vfio.Binder, string) ([]vfio.SysfsWrite, error)) error {
	if !dryRun && os.Geteuid() != 0 {
		return errors.New("must run as root: the sysfs bind attributes are root-only (or use --dry-run)")
	}
	b := &vfio.Binder{DryRun: dryRun}
	for _, addr := range addrs {
		writes, err := op(b, addr)
		if err != nil {
			return err
		}
		if len(writes) == 0 {
			fmt.Fprintf(cmd.OutOrStdout(), "%s: nothing to do\n", addr)
		}
		for _, w := range writes {
			fmt.Fprintln(cmd.OutOrStdout(), w)
		}
		a.log.Info("bind", zap.String("device", addr), zap.Bool("dry_run", dryRun), zap.Int("writes", len(writes)))
	}
	return nil
}
