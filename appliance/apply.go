package appliance

import (
	"errors"
	"fmt"
)

// Apply makes the running guests those spec lists (a configuration file
// re-read on SIGHUP): guests no longer listed are removed, guests listed
// with other settings are removed and added again with the new ones, new
// guests are added; guests listed as they run are not touched. The NIC
// ports and lcores cannot change at runtime: a spec that changes them is
// refused whole, before anything changes. It returns what it did, one line
// per guest; a guest that fails to come up is reported and the others are
// still applied.
func (a *Appliance) Apply(spec Spec) ([]string, error) {
	if err := spec.normalize(); err != nil {
		return nil, err
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.closed {
		return nil, errors.New("appliance: shut down")
	}
	if err := a.sameNICs(spec); err != nil {
		return nil, fmt.Errorf("%w: restart zcnet to apply it (no guest was changed)", err)
	}
	type placed struct {
		nic  string
		spec GuestSpec
	}
	want := map[string]placed{}
	var order []string
	for i, ns := range spec.NICs {
		for _, gs := range ns.Guests {
			want[gs.Socket] = placed{a.nics[i].name, gs}
			order = append(order, gs.Socket)
		}
	}
	var changes []string
	var errs []error
	readd := map[string]bool{}
	for _, g := range append([]*guest(nil), a.guests...) {
		w, keep := want[g.cfg.Socket]
		if keep && w.nic == g.nic.name && w.spec.Equal(g.cfg.GuestSpec) {
			delete(want, g.cfg.Socket)
			continue
		}
		if err := a.removeGuestLocked(g.cfg.Socket); err != nil {
			errs = append(errs, err)
		}
		if keep {
			readd[g.cfg.Socket] = true
		} else {
			changes = append(changes, "removed "+g.cfg.Socket)
		}
	}
	for _, sock := range order {
		w, ok := want[sock]
		if !ok {
			continue
		}
		if _, err := a.addGuestLocked(w.nic, w.spec); err != nil {
			errs = append(errs, err)
			continue
		}
		if readd[sock] {
			changes = append(changes, "changed "+sock)
		} else {
			changes = append(changes, "added "+sock)
		}
	}
	return changes, errors.Join(errs...)
}

// sameNICs reports how spec's NIC ports or lcores differ from the running
// ones, if they do.
func (a *Appliance) sameNICs(spec Spec) error {
	if spec.Lcores != a.spec.Lcores || spec.Burst != a.spec.Burst {
		return fmt.Errorf("the lcores or burst changed (lcores %q burst %d, running %q burst %d)", spec.Lcores, spec.Burst, a.spec.Lcores, a.spec.Burst)
	}
	if len(spec.NICs) != len(a.nics) {
		return fmt.Errorf("%d NIC ports given, %d running", len(spec.NICs), len(a.nics))
	}
	for i, ns := range spec.NICs {
		run := a.nics[i].spec
		if ns.PCI != run.PCI {
			return fmt.Errorf("NIC port %d is %s, running %s", i, ns.PCI, run.PCI)
		}
		if run.MaxGuests != ns.MaxGuests {
			// max_guests defaults to the number of guests listed: a file
			// that lists more guests than slots needs the NIC reopened.
			return fmt.Errorf("NIC port %s: %d guest slots wanted, %d running", ns.PCI, ns.MaxGuests, run.MaxGuests)
		}
		if w, r := settings(ns), settings(run); w != r {
			return fmt.Errorf("NIC port %s: its settings changed (%+v, running %+v)", ns.PCI, w, r)
		}
	}
	return nil
}

// nicSettings are a NICSpec's settings fixed while the NIC runs.
type nicSettings struct {
	QueuePairs, Rxd, Txd, MTU int
	Copy, NoPacked            bool
}

func settings(ns NICSpec) nicSettings {
	return nicSettings{QueuePairs: ns.QueuePairs, Rxd: ns.Rxd, Txd: ns.Txd, MTU: ns.MTU, Copy: ns.Copy, NoPacked: ns.NoPacked}
}
