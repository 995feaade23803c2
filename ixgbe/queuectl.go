package ixgbe

import (
	"errors"
	"fmt"
)

// Per-queue stop and restart, for owners whose buffers come and go while
// the port keeps running: the zero-copy engine posts a guest's own buffers,
// and when that guest disconnects or replaces its memory table the queues
// holding its buffers must stop, give every buffer back (Drain) and later
// start again empty, without disturbing the other queues of the port.

// errPortStopped is returned when a queue is restarted on a stopped port.
var errPortStopped = errors.New("ixgbe: port is stopped; open it again")

// StopRxQueue disables RX queue i and waits until the device confirms it
// is off. Afterwards the device no longer writes into the buffers posted
// to it: take them back with Drain, then StartRxQueue. Frames arriving for
// a stopped queue are dropped by the device and counted.
func (p *Port) StopRxQueue(i int) error {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	q := p.rx[i]
	if q.stopped {
		return nil
	}
	q.stopped = true
	return p.stopQueue(rxQueueReg(q.index, rxqRXDCTL), rxdctlEnable, fmt.Sprintf("RX queue %d", q.index))
}

// StartRxQueue re-enables a stopped RX queue with an empty ring whose
// buffers are bufSize bytes (SRRCTL.BSIZEPACKET: a multiple of 1024 up to
// 16384; 0 keeps the size the queue had). Drain must have taken back every
// posted buffer first.
func (p *Port) StartRxQueue(i, bufSize int) error {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	if p.stopped {
		return errPortStopped
	}
	q := p.rx[i]
	if err := q.rearm(bufSize, p.MaxRxWrite()); err != nil {
		return err
	}
	if err := p.startRxQueue(q); err != nil {
		return err
	}
	q.stopped = false
	return nil
}

// RxBufSize is the buffer size the queue's descriptors are programmed for.
func (q *RxQueue) RxBufSize() int { return int(q.bufSize) }

// MinBufLen is the shortest buffer Post accepts: RxBufSize, or less when
// no frame the port accepts is that long (the device never writes past a
// frame's end), so a guest's 1518-byte buffer can take a 2 KiB-programmed
// queue's frames.
func (q *RxQueue) MinBufLen() int { return int(q.minBuf) }

// MaxRxWrite is the most bytes the port writes into memory for one
// received frame. The MAC accepts frames of up to MAXFRS bytes with
// jumbo frames on and 1518 otherwise, FCS included, and 4 more with a
// VLAN tag; the FCS is stripped and the tag may stay in the frame. So the
// longest written frame is that limit itself.
func (p *Port) MaxRxWrite() int { return max(p.cfg.MTU, defaultMTU) + ethOverhead }

// StopTxQueue disables TX queue i and waits until the device confirms it
// is off; packets not yet sent are abandoned. Reclaim still returns the
// packets sent before the stop; take the abandoned ones' cookies back with
// Drain, then StartTxQueue.
func (p *Port) StopTxQueue(i int) error {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	q := p.tx[i]
	if q.stopped {
		return nil
	}
	q.stopped = true
	return p.stopQueue(txQueueReg(q.index, txqTXDCTL), txdctlEnable, fmt.Sprintf("TX queue %d", q.index))
}

// StartTxQueue re-enables a stopped, drained TX queue with an empty ring.
func (p *Port) StartTxQueue(i int) error {
	p.ctlMu.Lock()
	defer p.ctlMu.Unlock()
	if p.stopped {
		return errPortStopped
	}
	q := p.tx[i]
	if err := q.rearm(); err != nil {
		return err
	}
	if err := p.startTxQueue(q); err != nil {
		return err
	}
	q.stopped = false
	return nil
}

// rearm readies a stopped, drained RX queue for a restart with an empty
// ring of bufSize-byte buffers (0 keeps the size); maxWrite is the most its
// function writes for one frame.
func (q *RxQueue) rearm(bufSize, maxWrite int) error {
	if !q.stopped {
		return fmt.Errorf("ixgbe: RX queue %d is running; stop it first", q.index)
	}
	if q.next != q.tail {
		return fmt.Errorf("ixgbe: RX queue %d still has %d posted buffers; Drain them first", q.index, q.tail-q.next)
	}
	if bufSize != 0 {
		if bufSize%1024 != 0 || bufSize < 1024 || bufSize > 16384 {
			return fmt.Errorf("ixgbe: RX buffer size %d must be a multiple of 1024 from 1024 to 16384", bufSize)
		}
		q.bufSize = uint32(bufSize)
		q.minBuf = uint32(min(bufSize, maxWrite))
	}
	q.next, q.tail = 0, 0
	return nil
}

// rearm readies a stopped, drained TX queue for a restart with an empty
// ring.
func (q *TxQueue) rearm() error {
	if !q.stopped {
		return fmt.Errorf("ixgbe: TX queue %d is running; stop it first", q.index)
	}
	if q.clean != q.tail {
		return fmt.Errorf("ixgbe: TX queue %d still has packets in flight; Drain them first", q.index)
	}
	q.tail, q.clean = 0, 0
	q.memo, q.loaded = txOffload{}, [2]uint64{}
	if q.headWB {
		q.head.store(0)
	}
	return nil
}
