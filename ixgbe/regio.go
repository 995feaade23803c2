package ixgbe

import (
	"fmt"
	"runtime"
	"time"

	"github.com/zcnet/zcnet/vfio"
)

// regs is register access to one function's BAR: the PF's or a VF's.
type regs struct{ bar vfio.BAR }

func (r regs) read(off uint32) uint32     { return r.bar.Read32(off) }
func (r regs) write(off uint32, v uint32) { r.bar.Write32(off, v) }
func (r regs) set(off uint32, bits uint32) {
	r.bar.Write32(off, r.bar.Read32(off)|bits)
}
func (r regs) clear(off uint32, bits uint32) {
	r.bar.Write32(off, r.bar.Read32(off)&^bits)
}

func (p *Port) read(off uint32) uint32        { return p.bar.Read32(off) }
func (p *Port) write(off uint32, v uint32)    { p.bar.Write32(off, v) }
func (p *Port) set(off uint32, bits uint32)   { regs{p.bar}.set(off, bits) }
func (p *Port) clear(off uint32, bits uint32) { regs{p.bar}.clear(off, bits) }

// TimeoutError reports a register that did not reach the expected state in
// time: the device is absent, wedged, or not an 82599.
type TimeoutError struct {
	What    string
	Reg     uint32
	Value   uint32
	Timeout time.Duration
}

func (e *TimeoutError) Error() string {
	return fmt.Sprintf("timed out after %v waiting for %s (register %#05x reads %#08x); the device may be wedged: try a function-level reset or power cycle", e.Timeout, e.What, e.Reg, e.Value)
}

// waitSet polls off until all of bits read as set.
func (r regs) waitSet(off, bits uint32, timeout time.Duration, what string) error {
	return r.waitFor(off, bits, bits, timeout, what)
}

// waitClear polls off until all of bits read as clear.
func (r regs) waitClear(off, bits uint32, timeout time.Duration, what string) error {
	return r.waitFor(off, bits, 0, timeout, what)
}

func (p *Port) waitSet(off, bits uint32, timeout time.Duration, what string) error {
	return regs{p.bar}.waitSet(off, bits, timeout, what)
}

func (p *Port) waitClear(off, bits uint32, timeout time.Duration, what string) error {
	return regs{p.bar}.waitClear(off, bits, timeout, what)
}

// waitFor polls off until (value & mask) == want. It spins briefly (the
// common case is a bit that flips within microseconds), then sleeps between
// reads so a slow device does not cost a core.
func (r regs) waitFor(off, mask, want uint32, timeout time.Duration, what string) error {
	deadline := time.Now().Add(timeout)
	for i := 0; ; i++ {
		v := r.read(off)
		if v&mask == want {
			return nil
		}
		if time.Now().After(deadline) {
			return &TimeoutError{What: what, Reg: off, Value: v, Timeout: timeout}
		}
		backOff(i)
	}
}

// backOff paces the i-th poll of a wait: spin briefly (the common case is a
// bit that flips within microseconds), then sleep between reads so that a
// slow device does not cost a core.
func backOff(i int) {
	if i < 64 {
		runtime.Gosched()
	} else {
		time.Sleep(20 * time.Microsecond)
	}
}
