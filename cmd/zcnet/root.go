package main

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/pprof"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/vfio"
)

// version is set at link time (-ldflags "-X main.version=...") by `make build`.
var version = "dev"

// app holds what every subcommand shares.
type app struct {
	logLevel string
	log      *zap.Logger
	// cpuProfile is --cpuprofile's path; profile is open while the
	// command runs.
	cpuProfile string
	profile    *os.File
	// open opens the NIC functions `zcnet run` serves: vfio.Open, or in
	// tests simulated devices.
	open appliance.Opener
}

func newRootCommand() *cobra.Command {
	return newRootCommandWith(func(pci string) (vfio.Device, error) { return vfio.Open(pci) })
}

// newRootCommandWith is newRootCommand with the NIC functions opened by
// open.
func newRootCommandWith(open appliance.Opener) *cobra.Command {
	a := &app{log: zap.NewNop(), open: open}
	root := &cobra.Command{
		Use:   "zcnet",
		Short: "Poll-mode, zero-copy 82599 NIC driver and vhost-user back end",
		Long: `zcnet takes an Intel 82599 PF or SR-IOV VF away from the kernel over VFIO
and moves packets between the wire and virtual machines' own virtio buffers
with no copy, polled by pinned cores.`,
		SilenceUsage:  true,
		SilenceErrors: true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			log, err := newLogger(a.logLevel)
			if err != nil {
				return err
			}
			a.log = log
			return a.startProfile()
		},
		PersistentPostRunE: func(*cobra.Command, []string) error {
			_ = a.log.Sync()
			return a.stopProfile()
		},
	}
	root.PersistentFlags().StringVar(&a.logLevel, "log-level", "info", "log level: debug, info, warn or error")
	root.PersistentFlags().StringVar(&a.cpuProfile, "cpuprofile", "",
		"write a CPU profile of the whole process (poll cores, simulator, guests) to this file, for go tool pprof")
	root.AddCommand(
		newVersionCommand(),
		newProbeCommand(a),
		newBindCommand(a),
		newUnbindCommand(a),
		newRunCommand(a),
		newFwdCommand(a),
		newSimCommand(a),
		newBenchCommand(a),
		newStatsCommand(),
		newPortCommand(),
		newReloadCommand(),
	)
	return root
}

// startProfile starts --cpuprofile's CPU profile, if asked for.
func (a *app) startProfile() error {
	if a.cpuProfile == "" {
		return nil
	}
	f, err := os.Create(a.cpuProfile)
	if err != nil {
		return fmt.Errorf("--cpuprofile: %w", err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return fmt.Errorf("--cpuprofile: %w", err)
	}
	a.profile = f
	return nil
}

// stopProfile ends the CPU profile and closes its file. Cobra runs it
// only after a command succeeded; a failed command's profile is cut short
// when the process exits, as Go's profiler leaves it.
func (a *app) stopProfile() error {
	if a.profile == nil {
		return nil
	}
	pprof.StopCPUProfile()
	err := a.profile.Close()
	a.profile = nil
	if err != nil {
		return fmt.Errorf("--cpuprofile: %w", err)
	}
	return nil
}

// newLogger builds a console logger on stderr at the named level.
func newLogger(level string) (*zap.Logger, error) {
	lvl, err := zapcore.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("--log-level %q: want debug, info, warn or error", level)
	}
	cfg := zap.NewDevelopmentConfig()
	cfg.Level = zap.NewAtomicLevelAt(lvl)
	cfg.DisableStacktrace = lvl > zapcore.DebugLevel
	cfg.Development = false
	return cfg.Build()
}

func newVersionCommand() *cobra.Command {
	return &cobra.Command{
		Use:   "version",
		Short: "Print the version and build information",
		Args:  cobra.NoArgs,
		Run: func(cmd *cobra.Command, _ []string) {
			rev := "unknown"
			if bi, ok := debug.ReadBuildInfo(); ok {
				for _, s := range bi.Settings {
					if s.Key == "vcs.revision" {
						rev = s.Value
					}
				}
			}
			fmt.Fprintf(cmd.OutOrStdout(), "zcnet %s (commit %s, %s, %s/%s)\n",
				version, rev, runtime.Version(), runtime.GOOS, runtime.GOARCH)
		},
	}
}
