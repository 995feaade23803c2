package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/goccy/go-yaml"
	"go.uber.org/zap"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/control"
	"github.com/zcnet/zcnet/vhost"
)

// vhostOptions are the flags of `zcnet run` for the vhost data path.
type vhostOptions struct {
	vhost       []string
	client      bool
	noPacked    bool
	rxq, txq    int
	copyBreak   int
	copyAll     bool
	config      string
	telemetry   string
	metricsAddr string
	memLimit    string // --vhost-mem-limit

	control       string // --control socket path ("" for none)
	controlSocket vhost.SocketOptions
	controlMode   string
	controlGroup  string
}

// specFromFlags turns the testpmd-style flags into an appliance.Spec.
// Sockets are shared out as operators expect: with one --pci every
// --vhost guest is a pool of that NIC port (its own queue pairs, frames
// steered to it by its MAC); with as many --pci as --vhost, NIC port i
// serves socket i.
func specFromFlags(o *runOptions) (appliance.Spec, error) {
	v := &o.vhostOpts
	var spec appliance.Spec
	switch {
	case len(o.pci) == 0:
		return spec, errors.New("give the NIC with --pci ADDRESS (an 82599 PF or VF bound to vfio-pci; see zcnet probe)")
	case len(v.vhost) == 0:
		return spec, errors.New("give at least one vhost-user socket with --vhost PATH")
	case len(o.pci) > 1 && len(o.pci) != len(v.vhost):
		return spec, fmt.Errorf("%d --pci ports for %d --vhost sockets: give one --pci for all sockets, or one --pci per socket", len(o.pci), len(v.vhost))
	case v.rxq < 1 || v.txq < 1:
		return spec, fmt.Errorf("--rxq %d --txq %d: every vhost port needs at least one queue pair", v.rxq, v.txq)
	case o.burst < 1:
		return spec, fmt.Errorf("--burst %d: give 1 to 512 frames per poll", o.burst)
	case v.rxq != v.txq:
		return spec, fmt.Errorf("--rxq %d and --txq %d differ: the zero-copy engine joins each RX queue to a TX queue, give both the same count", v.rxq, v.txq)
	case v.copyBreak < 0:
		return spec, fmt.Errorf("--copy-break %d: give 0 (never copy) or a frame size", v.copyBreak)
	}
	copyAll := v.copyAll
	if maxFrame := o.mtu + 18; v.copyBreak > 0 {
		// The engine decides per port, not per frame: it copies every
		// frame or none. A break below the largest frame would copy some
		// frames only, which it cannot do; refuse rather than pretend.
		if v.copyBreak < maxFrame {
			return spec, fmt.Errorf("--copy-break %d: the engine copies all frames or none; give 0 (zero-copy) or at least %d (MTU %d + 18, copy everything)",
				v.copyBreak, maxFrame, o.mtu)
		}
		copyAll = true
	}
	spec.Lcores, spec.Burst = o.lcores, o.burst
	port := func(pci string, sockets []string) (appliance.NICSpec, error) {
		p := appliance.NICSpec{PCI: pci, QueuePairs: v.rxq, Rxd: o.rxRing, Txd: o.txRing, MTU: o.mtu, Copy: copyAll, NoPacked: v.noPacked}
		for _, s := range sockets {
			vs, err := parseVhostFlag(s)
			if err != nil {
				return p, err
			}
			vs.Client = v.client
			p.Guests = append(p.Guests, vs)
		}
		return p, nil
	}
	if len(o.pci) == 1 {
		p, err := port(o.pci[0], v.vhost)
		if err != nil {
			return spec, err
		}
		spec.NICs = []appliance.NICSpec{p}
	} else {
		for i, pci := range o.pci {
			p, err := port(pci, v.vhost[i:i+1])
			if err != nil {
				return spec, err
			}
			spec.NICs = append(spec.NICs, p)
		}
	}
	return spec, nil
}

// parseVhostFlag splits a --vhost value PATH[,mac=MAC][,vlan=VID][,trusted=on][,migration=off][,mode=MODE][,group=GROUP]
// (QEMU's option syntax) into the socket path and its options. Only
// trailing options are taken, so other commas stay in the path; a
// trailing ",word=value" that is no option is refused as a likely typo.
func parseVhostFlag(v string) (appliance.GuestSpec, error) {
	var s appliance.GuestSpec
	var trusted, vlan, migration string
	opts := map[string]*string{"mac": &s.MAC, "mode": &s.Mode, "group": &s.Group, "trusted": &trusted, "vlan": &vlan, "migration": &migration}
	seen := map[string]bool{}
	for {
		i := strings.LastIndexByte(v, ',')
		key, val, ok := strings.Cut(v[i+1:], "=")
		if i < 0 || !ok || strings.ContainsRune(val, '/') || !isOptionKey(key) {
			break
		}
		dst := opts[key]
		switch {
		case dst == nil:
			return s, fmt.Errorf("--vhost %s: unknown option %q (give mac=, vlan=, trusted=, migration=, mode= or group=)", v, key)
		case seen[key]:
			return s, fmt.Errorf("--vhost %s: %s given twice", v, key)
		}
		*dst, seen[key] = val, true
		v = v[:i]
	}
	switch trusted {
	case "", "off":
	case "on":
		s.Trusted = true
	default:
		return s, fmt.Errorf("--vhost %s: trusted=%s: give on or off", v, trusted)
	}
	switch migration {
	case "":
	case "on", "off":
		on := migration == "on"
		s.Migration = &on
	default:
		return s, fmt.Errorf("--vhost %s: migration=%s: give on or off", v, migration)
	}
	if vlan != "" {
		n, err := strconv.ParseUint(vlan, 10, 12)
		if err != nil || n == 0 || n > 4094 {
			return s, fmt.Errorf("--vhost %s: vlan=%s: give a VLAN ID from 1 to 4094", v, vlan)
		}
		s.VLAN = uint16(n)
	}
	s.Socket = v
	return s, nil
}

func isOptionKey(k string) bool {
	return k != "" && strings.Trim(k, "abcdefghijklmnopqrstuvwxyz") == ""
}

// loadConfig reads a --config file: YAML (.yaml, .yml) or JSON (.json)
// with the same keys, unknown keys refused, for example
//
//	lcores: "2-3"
//	nics:
//	  - pci: "0000:03:00.0"
//	    rxd: 1024
//	    txd: 1024
//	    max_guests: 1
//	    guests:
//	      - socket: /run/zcnet/vm1.sock
//	        mac: "52:54:00:12:34:56"
//	        mode: "0660"
//	        group: kvm
//	  - pci: "0000:04:00.0"
//	    no_packed: true
//	    guests:
//	      - {socket: /run/vm2.sock, client: true, mem_limit: 16G}
func loadConfig(path string) (appliance.Spec, error) {
	var spec appliance.Spec
	ext := strings.ToLower(filepath.Ext(path))
	if ext != ".json" && ext != ".yaml" && ext != ".yml" {
		return spec, fmt.Errorf("--config %s: write the configuration as YAML (.yaml, .yml) or JSON (.json)", path)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return spec, fmt.Errorf("--config: %w", err)
	}
	switch ext {
	case ".json":
		dec := json.NewDecoder(bytes.NewReader(b))
		dec.DisallowUnknownFields()
		err = dec.Decode(&spec)
	default:
		err = yaml.UnmarshalWithOptions(b, &spec, yaml.Strict())
	}
	if err != nil {
		return spec, fmt.Errorf("--config %s: %w", path, err)
	}
	return spec, nil
}

// runVhost is `zcnet run`: NIC ports joined to vhost-user
// guests by the zero-copy engine, until SIGINT/SIGTERM or --duration.
func runVhost(ctx context.Context, log *zap.Logger, opener appliance.Opener, o *runOptions, flagsSet func(string) bool, out io.Writer) error {
	var spec appliance.Spec
	var err error
	if o.vhostOpts.config != "" {
		for _, f := range []string{"pci", "vhost", "vhost-client", "rxq", "txq", "rxd", "txd", "mtu", "copy-break", "copy", "lcores", "burst", "no-packed"} {
			if flagsSet(f) {
				return fmt.Errorf("--%s and --config: give the ports either with flags or in the file, not both", f)
			}
		}
		spec, err = loadConfig(o.vhostOpts.config)
	} else {
		spec, err = specFromFlags(o)
	}
	if err != nil {
		return err
	}
	applyMemLimitFlag(&spec, o.vhostOpts.memLimit)
	// SIGHUP re-reads --config; caught from the start, so that one
	// arriving early does not kill the process.
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	tel, err := openTelemetry(log, o.vhostOpts.telemetry, o.vhostOpts.metricsAddr)
	if err != nil {
		return err
	}
	defer tel.close()
	var ctlListener *net.UnixListener
	if o.vhostOpts.control != "" {
		o.vhostOpts.controlSocket.Group = o.vhostOpts.controlGroup
		if o.vhostOpts.controlMode != "" {
			m, err := vhost.ParseSocketMode(o.vhostOpts.controlMode)
			if err != nil {
				return fmt.Errorf("--control-mode: %w", err)
			}
			o.vhostOpts.controlSocket.Mode = m
		}
		if ctlListener, err = control.Listen(o.vhostOpts.control, o.vhostOpts.controlSocket); err != nil {
			return err
		}
		defer ctlListener.Close() // until the server owns it
	}
	app, err := appliance.Open(spec, opener, appliance.WithLogger(log))
	if err != nil {
		return err
	}
	defer app.Shutdown()
	defer tel.close() // first: no snapshot runs while the data path shuts down
	if err := app.Run(ctx); err != nil {
		return err
	}
	tel.serve(func() appliance.Snapshot { return app.Snapshot("run") })
	reload := func() ([]string, error) {
		if o.vhostOpts.config == "" {
			return nil, errors.New("not started with --config: there is no file to re-read")
		}
		next, err := loadConfig(o.vhostOpts.config)
		if err != nil {
			return nil, err
		}
		applyMemLimitFlag(&next, o.vhostOpts.memLimit)
		return app.Apply(next)
	}
	if ctlListener != nil {
		ctl := control.NewServer(app, "run", log)
		if o.vhostOpts.config != "" {
			ctl.Reload = reload
		}
		ctl.Serve(ctlListener)
		defer ctl.Close()
	}
	for _, g := range app.Guests() {
		log.Info("vhost-user port", zap.String("socket", g.Socket), zap.String("mode", g.Mode), zap.String("nic", g.NIC))
	}

	runCtx, tick, endWindow := runWindow(ctx, o.duration, o.interval)
	defer endWindow()
	prev, prevAt := app.Snapshot("run"), time.Now()
	for done := false; !done; {
		select {
		case <-runCtx.Done():
			done = true
		case <-hup:
			changes, err := reload()
			log.Info("SIGHUP: configuration re-read", zap.Strings("changes", changes), zap.Error(err))
		case err := <-app.Failed():
			return logLcoreDeath(log, err) // the deferred shutdown stops the rest
		case now := <-tick:
			cur := app.Snapshot("run")
			fmt.Fprintln(out, rateLine(&prev, &cur, now.Sub(prevAt).Seconds()))
			prev, prevAt = cur, now
		}
	}
	log.Info("shutting down: stopping lcores, NIC queues, guest sessions")
	final := app.Snapshot("run")
	tel.close()
	if ctlListener != nil {
		ctlListener.Close() // no guest comes or goes while the data path shuts down
	}
	if err := app.Shutdown(); err != nil {
		return fmt.Errorf("shutdown: %w", err)
	}
	printSummary(out, &final)
	return nil
}
