package ixgbe

import (
	"errors"
	"fmt"

	"github.com/zcnet/zcnet/ring"
)

// The VF's queues: the PF's RxQueue and TxQueue over the VF's register
// blocks, their lifecycle, and recovery from a reset by the PF.

// NumRxQueues and NumTxQueues report how many queues the VF has.
func (v *VF) NumRxQueues() int { return len(v.rx) }
func (v *VF) NumTxQueues() int { return len(v.tx) }

// RxQueue returns receive queue i. Each queue has one owner at a time.
func (v *VF) RxQueue(i int) *RxQueue { return v.rx[i] }

// TxQueue returns transmit queue i. Each queue has one owner at a time.
func (v *VF) TxQueue(i int) *TxQueue { return v.tx[i] }

func (v *VF) rxSetup() rxSetup {
	// Drop when a queue is full, as ixgbevf does: the PF sets the VF's
	// queues' drop enable (PFQDE) anyway, so one stalled VF queue cannot
	// block the port.
	return rxSetup{dropWhenFull: true, vlanStrip: v.cfg.VLANStrip, timeout: v.cfg.ResetTimeout}
}

// startQueues programs the VF's receive queue layout and starts the
// queues meant to run, with empty rings: their software indexes go back
// to slot 0 with the device's (a recovery restarts queues that ran).
func (v *VF) startQueues() error {
	psrtype := uint32(0)
	for n := len(v.rx); n > 1; n >>= 1 {
		psrtype += 1 << vfRQPLShift // RQPL: log2 of the queues RSS spreads over
	}
	v.write(vfPSRTYPE, psrtype)
	for i, q := range v.rx {
		if !v.running[i] {
			continue
		}
		if err := q.rearm(0, v.MaxRxWrite()); err != nil {
			return err
		}
		if err := v.startRx(vfRxQueueReg(i, 0), q, v.rxSetup()); err != nil {
			return err
		}
		q.stopped = false
	}
	for i, q := range v.tx {
		if !v.running[len(v.rx)+i] {
			continue
		}
		if err := q.rearm(); err != nil {
			return err
		}
		if err := v.startTx(vfTxQueueReg(i, 0), q, v.cfg.TxThresholds, v.cfg.ResetTimeout); err != nil {
			return err
		}
		q.stopped = false
	}
	return nil
}

// Stop disables every queue and waits until the device confirms each is
// off. Afterwards the owners take their buffers back with Drain.
func (v *VF) Stop() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	return v.stopLocked()
}

func (v *VF) stopLocked() error {
	if v.stopped || v.closed {
		return nil
	}
	v.stopped = true
	var errs []error
	for i := range v.rx {
		errs = append(errs, v.stopRx(i))
	}
	for i := range v.tx {
		errs = append(errs, v.stopTx(i))
	}
	return errors.Join(errs...)
}

func (v *VF) stopRx(i int) error {
	v.rx[i].stopped = true
	return v.stopQueue(vfRxQueueReg(i, rxqRXDCTL), rxdctlEnable, v.cfg.ResetTimeout, fmt.Sprintf("VF RX queue %d", i))
}

func (v *VF) stopTx(i int) error {
	v.tx[i].stopped = true
	return v.stopQueue(vfTxQueueReg(i, txqTXDCTL), txdctlEnable, v.cfg.ResetTimeout, fmt.Sprintf("VF TX queue %d", i))
}

// StopRxQueue disables RX queue i and waits until the device confirms it
// is off; take its buffers back with Drain, then StartRxQueue.
func (v *VF) StopRxQueue(i int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.running[i] = false
	if v.rx[i].stopped {
		return nil
	}
	return v.stopRx(i)
}

// StopTxQueue disables TX queue i and waits until the device confirms it
// is off; packets not yet sent are abandoned (Drain returns them).
func (v *VF) StopTxQueue(i int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	v.running[len(v.rx)+i] = false
	if v.tx[i].stopped {
		return nil
	}
	return v.stopTx(i)
}

// startable refuses restarts of a stopped, closed or resetting VF.
func (v *VF) startable() error {
	switch {
	case v.stopped || v.closed:
		return errors.New("ixgbe VF: stopped; open it again")
	case v.resetting:
		return ErrVFReset
	}
	return nil
}

// StartRxQueue re-enables a stopped, drained RX queue with an empty ring
// of bufSize-byte buffers (0 keeps the size).
func (v *VF) StartRxQueue(i, bufSize int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.startable(); err != nil {
		return err
	}
	q := v.rx[i]
	if err := q.rearm(bufSize, v.MaxRxWrite()); err != nil {
		return err
	}
	if err := v.startRx(vfRxQueueReg(i, 0), q, v.rxSetup()); err != nil {
		return err
	}
	q.stopped, v.running[i] = false, true
	return nil
}

// StartTxQueue re-enables a stopped, drained TX queue with an empty ring.
func (v *VF) StartTxQueue(i int) error {
	v.mu.Lock()
	defer v.mu.Unlock()
	if err := v.startable(); err != nil {
		return err
	}
	q := v.tx[i]
	if err := q.rearm(); err != nil {
		return err
	}
	if err := v.startTx(vfTxQueueReg(i, 0), q, v.cfg.TxThresholds, v.cfg.ResetTimeout); err != nil {
		return err
	}
	q.stopped, v.running[len(v.rx)+i] = false, true
	return nil
}

// CheckReset looks for a reset of the VF by its PF and recovers from one.
// The PF resets a VF when its own driver resets or goes down, or when the
// host's administrator changes the VF; the VF sees its mailbox's RSTI or
// RSTD, a control message without CTS, a NACK without CTS left in the
// mailbox, or a request that failed (ErrVFReset, MailboxError).
//
// On a reset it stops every queue, hands each queue's posted buffers and
// unsent packets to drained (queue index, RX cookies, TX cookies; called
// once per queue pair index, either slice possibly empty), redoes the
// bring-up (the handshake, API, queues, frame size, address, multicast,
// VLANs and xcast mode asked for before) and restarts the queues that
// were running, empty. It returns whether a reset was seen. If the
// bring-up fails (the PF is still resetting, or refuses now what it
// allowed before) the queues stay stopped and the next call tries the
// bring-up again.
//
// Call it from the goroutine that owns the queues, between data-path calls
// (a poll loop every few milliseconds: it costs two register reads when
// nothing happened). Resets are counted (Stats.Resets) and logged.
func (v *VF) CheckReset(drained func(queue int, rx, tx []ring.Cookie)) (bool, error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.closed || v.stopped {
		return false, nil
	}
	if !v.resetting && !v.noteReset() {
		return false, nil
	}
	if v.rx[0].released {
		return true, errors.New("ixgbe VF: closed")
	}
	// Count what the device counted before the reset; bring-up takes a
	// new baseline.
	v.stats.update(v.regs)
	var errs []error
	for i := range v.rx {
		errs = append(errs, v.stopRx(i))
	}
	for i := range v.tx {
		errs = append(errs, v.stopTx(i))
	}
	if err := errors.Join(errs...); err != nil {
		// A queue that does not confirm it is off may still DMA: its
		// buffers cannot be handed back yet.
		return true, fmt.Errorf("ixgbe VF %s: recovering from a reset: %w", v.dev.Address(), err)
	}
	for i := range max(len(v.rx), len(v.tx)) {
		var rx, tx []ring.Cookie
		if i < len(v.rx) {
			rx, _ = v.rx[i].Drain(nil)
		}
		if i < len(v.tx) {
			tx, _ = v.tx[i].Drain(nil)
		}
		if (len(rx) > 0 || len(tx) > 0) && drained != nil {
			drained(i, rx, tx)
		}
	}
	if err := v.bringUp(); err != nil {
		v.cfg.Logf("ixgbe VF %s: bring-up after the PF's reset failed, will retry: %v", v.dev.Address(), err)
		return true, fmt.Errorf("ixgbe VF %s: bring-up after the PF's reset: %w", v.dev.Address(), err)
	}
	v.cfg.Logf("ixgbe VF %s: recovered from the PF's reset (mailbox API %v, MAC %s)", v.dev.Address(), v.info.API, v.mac)
	return true, nil
}

// Recover brings the VF up again after a reset by the PF whose queues
// the owner stopped and drained itself (ResetPending, then StopRx, DrainRx,
// StopTx, DrainTx of each pair): the bring-up of CheckReset without its
// queue work. The queues stay stopped for the owner to start. It is the
// slow half of a recovery, mailbox exchanges that wait up to
// VFConfig.MailboxTimeout (and ResetTimeout for the PF's own reset) each,
// so it is meant for a goroutine of its own rather than a poll loop: it
// touches no queue's ring, only the VF's registers and mailbox, and is
// safe to call while the owners' goroutines run (they must not start a
// queue before it succeeds; StartRxQueue and StartTxQueue refuse with
// ErrVFReset until then).
//
// It returns nil when the VF is up (or no reset was pending), an error
// naming the queue when one still runs (its owner has not stopped it:
// bringing the VF up would restart it over buffers it holds), and the
// bring-up's error when the PF does not answer or refuses: the VF stays
// marked for recovery and the next call tries again.
func (v *VF) Recover() error {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.closed:
		return errors.New("ixgbe VF: closed")
	case v.stopped:
		return nil
	case !v.resetting && !v.noteReset():
		return nil
	}
	for i, run := range v.running {
		if run {
			kind, q := "RX", i
			if i >= len(v.rx) {
				kind, q = "TX", i-len(v.rx)
			}
			return fmt.Errorf("ixgbe VF %s: %s queue %d still runs; its owner stops and drains it before Recover (or calls CheckReset)", v.dev.Address(), kind, q)
		}
	}
	v.stats.update(v.regs)
	if err := v.bringUp(); err != nil {
		v.cfg.Logf("ixgbe VF %s: bring-up after the PF's reset failed, will retry: %v", v.dev.Address(), err)
		return fmt.Errorf("ixgbe VF %s: bring-up after the PF's reset: %w", v.dev.Address(), err)
	}
	v.cfg.Logf("ixgbe VF %s: recovered from the PF's reset (mailbox API %v, MAC %s)", v.dev.Address(), v.info.API, v.mac)
	return nil
}

// noteReset looks for a reset by the PF and, finding one, marks the VF
// for recovery, counts and logs it. Under v.mu.
func (v *VF) noteReset() bool {
	why := v.resetCause()
	if why == "" {
		return false
	}
	v.resetting = true
	v.resets++
	v.cfg.Logf("ixgbe VF %s: reset by the PF (%s); stopping its queues and bringing it up again", v.dev.Address(), why)
	return true
}

// ResetPending reports whether the PF has reset the VF and CheckReset has
// not yet recovered from it. It is the cheap check for a poll loop: one
// register read (VFMAILBOX) when nothing happened; a message from the PF
// that is not a reset (a link change's ping) is read and dropped. A reset
// it finds is counted and logged, and stays pending for CheckReset.
//
// It lets a queue owner that must take its buffers back through its own
// path (the zero-copy engine: StopRx, DrainRx and StopTx, DrainTx of the
// QueuePair) do so first; CheckReset then finds the queues stopped and
// empty, brings the VF up and leaves the queues stopped for the owner to
// start (StartRx, StartTx). Safe from any goroutine.
func (v *VF) ResetPending() bool {
	v.mu.Lock()
	defer v.mu.Unlock()
	switch {
	case v.closed || v.stopped:
		return false
	case v.resetting:
		return true
	case v.mbx.status()&(mbxRSTI|mbxRSTD|mbxPFSTS) == 0:
		return false
	}
	return v.noteReset()
}

// resetCause says why the VF must be reset, or "" when nothing says so.
func (v *VF) resetCause() string {
	st := v.mbx.status()
	switch {
	case st&mbxRSTI != 0:
		return "VFMAILBOX.RSTI: the PF is resetting"
	case st&mbxRSTD != 0:
		return "VFMAILBOX.RSTD: the PF reset"
	}
	if w0, ok, err := v.mbx.pending(); err != nil {
		return "reading the PF's message failed: " + err.Error()
	} else if ok && w0&msgIDMask == msgPFControl && w0&msgCTS == 0 {
		return "the PF's control message withdrew clear-to-send"
	}
	if w0 := v.mbx.peek(); w0&msgCTS == 0 && w0&msgNACK != 0 {
		return fmt.Sprintf("the mailbox holds a NACK without CTS (%#08x)", w0)
	}
	return ""
}

// QueuePair returns queue pair i: a ring.QueuePair, so that the
// zero-copy engine runs on a VF as on a PF.
func (v *VF) QueuePair(i int) QueuePair { return QueuePair{v, v.rx[i], v.tx[i], i} }
