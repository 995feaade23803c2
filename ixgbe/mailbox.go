package ixgbe

import (
	"errors"
	"fmt"
	"time"
)

// The VF side of the VF<->PF mailbox, in the legacy form every PF up to
// mailbox API 1.4 speaks (Linux ixgbevf mbx.c *_legacy, DPDK ixgbe_mbx.c
// *_legacy): 16 words of shared memory (VFMBMEM) and one control register
// (VFMAILBOX).
//
//	send:    take VFU (write it, read it back), forget stale PFSTS/PFACK,
//	         write the words, write REQ (which also drops VFU), wait for PFACK.
//	receive: wait for PFSTS, take VFU, read the words, write ACK (which also
//	         drops VFU).
//
// PFSTS, PFACK and RSTD clear when VFMAILBOX is read, so every read goes
// through status, which keeps them (in cached) until the bit has been acted
// on: a reset the PF announced while a message was being waited for is
// still seen by the next reset check.

// ErrVFReset means the PF reset this VF, or withdrew its clear-to-send,
// while the driver used it: the VF's queues no longer run and its filters
// are gone. CheckReset notices it, hands back the queues' buffers and
// brings the VF up again.
var ErrVFReset = errors.New("ixgbe VF: the PF reset this VF (or took back its clear-to-send); call CheckReset to recover")

// MailboxError is a mailbox exchange with the PF that failed: no answer in
// time, or an answer that is not one to the request.
type MailboxError struct {
	Request string
	Reason  string
}

func (e *MailboxError) Error() string {
	return fmt.Sprintf("ixgbe VF: mailbox %s: %s; is the PF's driver (ixgbe) loaded and up?", e.Request, e.Reason)
}

// RefusedError is the PF's NACK of a request: the host's policy for this
// VF does not allow it. Hint says what the host's administrator can change.
type RefusedError struct {
	Request string
	Hint    string
}

func (e *RefusedError) Error() string {
	if e.Hint == "" {
		return fmt.Sprintf("ixgbe VF: the host refused %s", e.Request)
	}
	return fmt.Sprintf("ixgbe VF: the host refused %s: %s", e.Request, e.Hint)
}

// mailbox is the VF's end of the mailbox. It is used under VF.mu.
type mailbox struct {
	r       regs
	cached  uint32 // clear-on-read bits seen and not yet acted on
	timeout time.Duration
}

// status reads VFMAILBOX, adding the clear-on-read bits seen before.
func (m *mailbox) status() uint32 {
	v := m.r.read(vfMAILBOX) | m.cached
	m.cached |= v & mbxR2CBits
	return v
}

// forget drops cached clear-on-read bits once acted on.
func (m *mailbox) forget(bits uint32) { m.cached &^= bits }

// waitBit polls until status shows bit, failing early if the PF starts a
// reset (RSTI) meanwhile: no answer comes then.
func (m *mailbox) waitBit(bit uint32, req, what string) error {
	deadline := time.Now().Add(m.timeout)
	for i := 0; ; i++ {
		st := m.status()
		if st&bit != 0 {
			m.forget(bit)
			return nil
		}
		if st&mbxRSTI != 0 {
			return fmt.Errorf("mailbox %s: %w", req, ErrVFReset)
		}
		if time.Now().After(deadline) {
			return &MailboxError{req, fmt.Sprintf("no %s from the PF within %v (VFMAILBOX %#x)", what, m.timeout, st)}
		}
		backOff(i)
	}
}

// lock takes the buffer for the VF (VFU), which the PF grants only while
// it does not hold it (PFU).
func (m *mailbox) lock(req string) error {
	deadline := time.Now().Add(m.timeout)
	for i := 0; ; i++ {
		m.r.write(vfMAILBOX, mbxVFU)
		st := m.status()
		if st&mbxVFU != 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return &MailboxError{req, fmt.Sprintf("the PF held the mailbox buffer for %v (VFMAILBOX %#x)", m.timeout, st)}
		}
		backOff(i)
	}
}

// send writes msg to the PF and waits for its acknowledgement.
func (m *mailbox) send(msg []uint32, req string) error {
	if err := m.lock(req); err != nil {
		return err
	}
	// A message or acknowledgement from before is stale now: the buffer
	// is about to be overwritten.
	m.status()
	m.forget(mbxPFSTS | mbxPFACK)
	for i, w := range msg {
		m.r.write(vfMBMEM+4*uint32(i), w)
	}
	m.r.write(vfMAILBOX, mbxREQ)
	return m.waitBit(mbxPFACK, req, "acknowledgement")
}

// receive waits for the PF's message and reads its first n words.
func (m *mailbox) receive(dst []uint32, req string) error {
	if err := m.waitBit(mbxPFSTS, req, "reply"); err != nil {
		return err
	}
	if err := m.lock(req); err != nil {
		return err
	}
	for i := range dst {
		dst[i] = m.r.read(vfMBMEM + 4*uint32(i))
	}
	m.r.write(vfMAILBOX, mbxACK)
	return nil
}

// peek reads word 0 of the buffer without taking it: the PF leaves its
// last reply there, tagged CTS while this VF is clear to send.
func (m *mailbox) peek() uint32 { return m.r.read(vfMBMEM) }

// pending reads a message the PF sent on its own (a control message),
// if one is waiting; ok is false when none is.
func (m *mailbox) pending() (w0 uint32, ok bool, err error) {
	if m.status()&mbxPFSTS == 0 {
		return 0, false, nil
	}
	var w [1]uint32
	err = m.receive(w[:], "PF message")
	return w[0], err == nil, err
}

// exchange sends msg and reads a reply of len(reply) words to it. Control
// messages the PF sent meanwhile are skipped (one without CTS means the
// VF must reset: ErrVFReset). Unless noCTS (the RESET reply carries none),
// a reply without CTS means the PF no longer counts this VF clear to send:
// ErrVFReset too. It returns whether the PF acknowledged (ACK) or refused
// (NACK) the request.
func (m *mailbox) exchange(msg, reply []uint32, req string, noCTS bool) (ack bool, err error) {
	if err := m.send(msg, req); err != nil {
		return false, err
	}
	id := msg[0] & msgIDMask
	for {
		if err := m.receive(reply, req); err != nil {
			return false, err
		}
		w0 := reply[0]
		switch {
		case w0&msgIDMask == msgPFControl && id != msgPFControl:
			if w0&msgCTS == 0 {
				return false, fmt.Errorf("mailbox %s: the PF's control message says %w", req, ErrVFReset)
			}
			continue // a ping; the reply is still to come
		case w0&msgIDMask != id:
			return false, &MailboxError{req, fmt.Sprintf("the reply is to message %#x (word 0 %#08x)", w0&msgIDMask, w0)}
		case !noCTS && w0&msgCTS == 0:
			return false, fmt.Errorf("mailbox %s: the reply (%#08x) has no CTS: %w", req, w0, ErrVFReset)
		case w0&msgACK != 0:
			return true, nil
		case w0&msgNACK != 0:
			return false, nil
		}
		return false, &MailboxError{req, fmt.Sprintf("the reply (%#08x) is neither ACK nor NACK", w0)}
	}
}
