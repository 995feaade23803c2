package ixgbe

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zcnet/zcnet/vfio"
	"golang.org/x/sys/unix"
)

// Link is the state of the port's link.
type Link struct {
	Up bool
	// Speed in Mb/s (10000, 1000, 100), 0 when down.
	Speed int
}

func (l Link) String() string {
	if !l.Up {
		return "down"
	}
	return fmt.Sprintf("up %d Mb/s", l.Speed)
}

// linkSpeeds maps LINKS bits 29:28 to Mb/s.
var linkSpeeds = [4]int{0, 100, 1000, 10000}

// restartAutoneg keeps the link mode the EEPROM loaded into AUTOC (it is
// what the board's PHY or SFP cage is wired for) and restarts
// autonegotiation with it.
func (p *Port) restartAutoneg() {
	p.write(regAUTOC, p.read(regAUTOC)|autocRestartAN)
}

// Link reads the link state from the device.
func (p *Port) Link() Link {
	v := p.read(regLINKS)
	if v&linksUp == 0 {
		return Link{}
	}
	return Link{Up: true, Speed: linkSpeeds[v>>linksSpeedShift&linksSpeedMask]}
}

// PollLink reads the link state and, if it changed since last reported,
// reports it to Config.OnLinkChange. It returns the state read.
func (p *Port) PollLink() Link {
	l := p.Link()
	p.linkMu.Lock()
	changed := !p.linkKnown || l != p.lastLink
	p.lastLink, p.linkKnown = l, true
	cb := p.cfg.OnLinkChange
	if changed && cb != nil {
		// Called under linkMu so reports arrive in order.
		cb(l)
	}
	p.linkMu.Unlock()
	return l
}

// waitLink waits for LINKS.UP.
func (p *Port) waitLink(timeout time.Duration) error {
	err := p.waitSet(regLINKS, linksUp, timeout, "link up (LINKS.UP)")
	p.PollLink()
	if err != nil {
		return fmt.Errorf("%w; check the cable or SFP+ module and the link partner, or set Config.LinkTimeout < 0 to open with the link down", err)
	}
	return nil
}

// linkWatcher turns the device's link-status-change interrupt into
// PollLink calls. The interrupt arrives on an eventfd wired to MSI vector
// 0; only LSC is unmasked.
type linkWatcher struct {
	p        *Port
	fd       int
	stopping atomic.Bool
	done     sync.WaitGroup
}

func startLinkWatcher(p *Port) (*linkWatcher, error) {
	fd, err := unix.Eventfd(0, unix.EFD_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("create link interrupt eventfd: %w", err)
	}
	if err := p.dev.IRQs().Enable(vfio.IRQMSI, []int{fd}); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("route MSI to an eventfd for link interrupts (use Config.LinkInterrupt=false to poll instead): %w", err)
	}
	w := &linkWatcher{p: p, fd: fd}
	w.done.Add(1)
	go w.run()
	p.read(regEICR) // drop causes raised during bring-up
	p.write(regEIMS, eicrLSC)
	return w, nil
}

func (w *linkWatcher) run() {
	defer w.done.Done()
	var buf [8]byte
	for {
		_, err := unix.Read(w.fd, buf[:])
		if w.stopping.Load() {
			return
		}
		if err != nil {
			if errors.Is(err, unix.EINTR) {
				continue
			}
			return
		}
		// Reading EICR clears it; in MSI mode nothing else needs acking.
		if w.p.read(regEICR)&eicrLSC != 0 {
			w.p.PollLink()
		}
	}
}

// stop masks the interrupt, wakes and waits for the goroutine, and
// releases the eventfd.
func (w *linkWatcher) stop() error {
	w.p.write(regEIMC, eicrLSC)
	err := w.p.dev.IRQs().Disable(vfio.IRQMSI)
	w.stopping.Store(true)
	var one [8]byte
	binary.LittleEndian.PutUint64(one[:], 1)
	if _, werr := unix.Write(w.fd, one[:]); werr != nil {
		err = errors.Join(err, fmt.Errorf("wake link watcher: %w", werr))
	}
	w.done.Wait()
	return errors.Join(err, unix.Close(w.fd))
}
