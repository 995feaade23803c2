package sim

import (
	"fmt"
	"math/bits"
	"sync/atomic"

	"github.com/zcnet/zcnet/vfio"
	"golang.org/x/sys/unix"
)

// irqPort implements vfio.IRQs: it records the eventfds the driver hands
// over; the interrupt block signals them.
type irqPort struct{ p *PF }

func irqCount(kind vfio.IRQKind) (int, error) {
	switch kind {
	case vfio.IRQINTx, vfio.IRQMSI, vfio.IRQErr, vfio.IRQReq:
		return 1, nil
	case vfio.IRQMSIX:
		return msixSize, nil
	}
	return 0, fmt.Errorf("sim: interrupt index %d: %w", kind, vfio.ErrNotSupported)
}

func (r irqPort) Count(kind vfio.IRQKind) (int, error) { return irqCount(kind) }

func (r irqPort) Enable(kind vfio.IRQKind, fds []int) error {
	n, err := irqCount(kind)
	if err != nil {
		return err
	}
	if len(fds) > n {
		return fmt.Errorf("sim: %d eventfds for %v, which has %d vectors: %w", len(fds), kind, n, unix.EINVAL)
	}
	r.p.ctl.Lock()
	defer r.p.ctl.Unlock()
	r.p.irqFDs[kind] = append([]int(nil), fds...)
	return nil
}

func (r irqPort) Disable(kind vfio.IRQKind) error {
	if _, err := irqCount(kind); err != nil {
		return err
	}
	r.p.ctl.Lock()
	defer r.p.ctl.Unlock()
	delete(r.p.irqFDs, kind)
	return nil
}

// eventfdOne is the 8-byte increment written to an eventfd.
var eventfdOne = [8]byte{1}

// signal increments eventfd fd; -1 means the vector is not wired.
func (p *PF) signal(fd int) {
	if fd < 0 {
		return
	}
	if _, err := unix.Write(fd, eventfdOne[:]); err == nil {
		p.mc.interrupts.Add(1)
	}
}

func (p *PF) reg(off uint32) uint32 { return atomic.LoadUint32(&p.regs[off/4]) }

func (p *PF) setReg(off uint32, v uint32) { atomic.StoreUint32(&p.regs[off/4], v) }

// raise sets interrupt causes in EICR and delivers what is unmasked.
func (p *PF) raise(causes uint32) {
	p.ctl.Lock()
	p.raiseLocked(causes)
	p.ctl.Unlock()
}

func (p *PF) raiseLocked(causes uint32) {
	p.setReg(regEICR, p.reg(regEICR)|causes)
	p.deliverLocked(causes)
}

// deliverLocked signals the vectors of those causes that are both
// pending and enabled in EIMS. In MSI-X mode (GPIE.MSIX_MODE with MSI-X
// eventfds) EICR bits 15:0 are vectors 0-15 and the other causes go to the
// vector IVAR_MISC names; otherwise there is one vector. EITR moderation is
// not modelled: delivery is immediate.
func (p *PF) deliverLocked(causes uint32) {
	fire := causes & p.reg(regEICR) & p.reg(regEIMS)
	if fire == 0 {
		return
	}
	gpie := p.reg(regGPIE)
	if fds := p.irqFDs[vfio.IRQMSIX]; len(fds) > 0 && gpie&gpieMSIXMode != 0 {
		for q := fire & eicrQueueMask; q != 0; q &= q - 1 {
			p.signal(vectorFD(fds, bits.TrailingZeros32(q)))
		}
		if fire&^eicrQueueMask != 0 {
			if misc := p.reg(regIVARMISC) >> 8; misc&ivarValid != 0 {
				p.signal(vectorFD(fds, int(misc&0x3F)))
			}
		}
		// Auto-clear (EIAC) and auto-mask (EIAM with GPIE.EIAME) act when
		// a vector fires.
		p.setReg(regEICR, p.reg(regEICR)&^(fire&p.reg(regEIAC)))
		if gpie&gpieEIAME != 0 {
			p.setReg(regEIMS, p.reg(regEIMS)&^(fire&p.reg(regEIAM)))
		}
		return
	}
	for _, kind := range []vfio.IRQKind{vfio.IRQMSIX, vfio.IRQMSI, vfio.IRQINTx} {
		if fds := p.irqFDs[kind]; len(fds) > 0 {
			p.signal(fds[0])
			return
		}
	}
}

func vectorFD(fds []int, v int) int {
	if v < len(fds) {
		return fds[v]
	}
	return -1
}

// queueCause returns the EICR bit IVAR assigns to RX (tx=false) or TX queue
// q, or 0 when the entry is not valid or names a vector above 15 (vectors
// 16-63 live in EICR_EX, which the model does not implement).
func (p *PF) queueCause(q int, tx bool) uint32 {
	if vf, i := p.queueVF(q); vf != nil {
		vf.queueCause(i, tx) // a VF's queue interrupts the VF (VTIVAR), not the PF
		return 0
	}
	ivar := p.reg(regIVAR0 + 4*uint32(q/2))
	shift := 16 * uint(q%2)
	if tx {
		shift += 8
	}
	e := ivar >> shift & 0xFF
	if e&ivarValid == 0 || e&0x3F >= 16 {
		return 0
	}
	return 1 << (e & 0x3F)
}

// readEICR returns the causes and clears them: all of them, or with
// GPIE.OCD (other clear disable) only the queue bits 15:0 and bits 31:30.
// EICS reads the same causes without clearing them (the Linux driver's
// errata workaround relies on it).
func (p *PF) readEICR(clear bool) uint32 {
	p.ctl.Lock()
	defer p.ctl.Unlock()
	p.checkLinkLocked()
	v := p.reg(regEICR)
	if clear {
		mask := ^uint32(0)
		if p.reg(regGPIE)&gpieOCD != 0 {
			mask = eicrQueueMask | 3<<30
		}
		p.setReg(regEICR, v&^mask)
	}
	return v
}
