package ixgbe

import "github.com/zcnet/zcnet/ring"

// QueuePair is RX and TX queue i of a port or a VF with their lifecycle:
// what the zero-copy engine needs of a NIC (ring.QueuePair), so that the
// engine reaches the 82599 through the ring contract and never names it,
// nor whether it has a PF or a VF.
type QueuePair struct {
	p  queueOwner
	rx *RxQueue
	tx *TxQueue
	i  int
}

// queueOwner is the function (Port or VF) whose queues a QueuePair are.
type queueOwner interface {
	StopRxQueue(i int) error
	StartRxQueue(i, bufSize int) error
	StopTxQueue(i int) error
	StartTxQueue(i int) error
	MaxRxWrite() int
}

// QueuePair returns queue pair i.
func (p *Port) QueuePair(i int) QueuePair { return QueuePair{p, p.rx[i], p.tx[i], i} }

// Rx and Tx are the pair's queues on the ring contract.
func (q QueuePair) Rx() ring.RxQueue { return q.rx }
func (q QueuePair) Tx() ring.TxQueue { return q.tx }

// RxCapacity is how many buffers the RX ring holds at once.
func (q QueuePair) RxCapacity() int { return q.rx.Size() - 1 }

// RxMaxWrite is the most bytes the port writes for one received frame.
func (q QueuePair) RxMaxWrite() int { return q.p.MaxRxWrite() }

// TxFree is how many TX descriptors are free now.
func (q QueuePair) TxFree() int { return q.tx.Size() - 1 - q.tx.InFlight() }

// StopRx, DrainRx, StopTx, DrainTx, StartRx and StartTx stop, empty and
// restart one direction of the pair while the rest of the port runs.
func (q QueuePair) StopRx() error                                    { return q.p.StopRxQueue(q.i) }
func (q QueuePair) DrainRx(dst []ring.Cookie) ([]ring.Cookie, error) { return q.rx.Drain(dst) }
func (q QueuePair) StopTx() error                                    { return q.p.StopTxQueue(q.i) }
func (q QueuePair) DrainTx(dst []ring.Cookie) ([]ring.Cookie, error) { return q.tx.Drain(dst) }
func (q QueuePair) StartRx(bufSize int) error                        { return q.p.StartRxQueue(q.i, bufSize) }
func (q QueuePair) StartTx() error                                   { return q.p.StartTxQueue(q.i) }

// QueuePair is a ring.QueuePair.
var _ ring.QueuePair = QueuePair{}
