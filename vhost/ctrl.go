package vhost

import (
	"bytes"
	"encoding/binary"
	"net"

	"go.uber.org/zap"
)

// Control virtqueue classes and commands (virtio 1.2, 5.1.6.5).
const (
	ctrlClassRx     = 0
	ctrlRxPromisc   = 0
	ctrlRxAllmulti  = 1
	ctrlClassMAC    = 1
	ctrlMACTableSet = 0
	ctrlMACAddrSet  = 1
	ctrlClassMQ     = 4
	ctrlMQPairsSet  = 0

	// CtrlOK and CtrlErr are the ack values the device writes.
	CtrlOK  = 0
	CtrlErr = 1
)

// ctrlState is what the driver configured through the control queue.
type ctrlState struct {
	mac         [6]byte
	promisc     bool
	allmulti    bool
	activePairs int
	segs        [8]Segment
	cmd         [1024]byte // scratch for one command's readable bytes
}

// CtrlState is a snapshot of the control-queue configuration.
type CtrlState struct {
	MAC         [6]byte
	Promisc     bool
	Allmulti    bool
	ActivePairs int
}

// Ctrl returns the control-queue configuration.
func (d *Device) Ctrl() CtrlState {
	d.dp.Lock()
	defer d.dp.Unlock()
	return CtrlState{MAC: d.ctrl.mac, Promisc: d.ctrl.promisc, Allmulti: d.ctrl.allmulti, ActivePairs: d.ctrl.activePairs}
}

// ctrlQueue returns the running control queue, or nil if the front end
// keeps it (QEMU does) or CTRL_VQ was not negotiated.
func (d *Device) ctrlQueue() *Virtqueue {
	i := 2 * d.cfg.QueuePairs
	if i >= len(d.vrings) || d.features&NetFCtrlVQ == 0 {
		return nil
	}
	v := &d.vrings[i]
	if v.q == nil || v.q.broken || !d.ringEnabled(v) {
		return nil
	}
	return v.q
}

// PollControl executes the control commands the front end queued on the
// control virtqueue, when CTRL_VQ was negotiated and the front end handed
// the queue over (QEMU keeps it and answers itself; DPDK's virtio-user
// with cq=1 does not), and returns how many it handled. Call it with the
// data-path lock held, from the poller.
func (d *Device) PollControl() int {
	q := d.ctrlQueue()
	if q == nil {
		return 0
	}
	n := 0
	c := Chain{Segs: d.ctrl.segs[:0]}
	for {
		ok, err := q.Pop(&c)
		if !ok {
			break
		}
		n++
		if err != nil { // too many segments for a control command
			q.Push(c.Head, 0)
			continue
		}
		ack := byte(CtrlErr)
		if c.ReadLen >= 2 && c.ReadLen <= uint32(len(d.ctrl.cmd)) {
			cmd := d.ctrl.cmd[:Gather(d.ctrl.cmd[:c.ReadLen], c.Segs, 0)]
			ack = d.ctrlCommand(cmd[0], cmd[1], cmd[2:])
		}
		w := writable(c.Segs)
		if c.WriteLen < 1 || len(w) == 0 {
			q.Push(c.Head, 0) // no room for the ack: nothing to report
			continue
		}
		last := &w[len(w)-1]
		last.Buf[len(last.Buf)-1] = ack
		if l := q.DirtyLog(); l != nil {
			l.Mark(last.GPA+uint64(len(last.Buf))-1, 1)
		}
		q.Push(c.Head, 1)
	}
	q.Flush()
	return n
}

// ctrlCommand applies one command and returns the ack.
func (d *Device) ctrlCommand(class, cmd byte, data []byte) byte {
	s := &d.ctrl
	ok := false
	switch {
	case class == ctrlClassRx && (cmd == ctrlRxPromisc || cmd == ctrlRxAllmulti) && len(data) == 1:
		if cmd == ctrlRxPromisc {
			s.promisc = data[0] != 0
		} else {
			s.allmulti = data[0] != 0
		}
		ok = true
	case class == ctrlClassMAC && cmd == ctrlMACAddrSet && len(data) == 6:
		if d.cfg.FixedMAC && !bytes.Equal(data, d.cfg.MAC) {
			d.log.Info("guest may not change its MAC", zap.Stringer("mac", net.HardwareAddr(data)), zap.Stringer("configured", d.cfg.MAC))
			return CtrlErr
		}
		copy(s.mac[:], data)
		ok = true
	case class == ctrlClassMAC && cmd == ctrlMACTableSet:
		ok = validMACTables(data)
	case class == ctrlClassMQ && cmd == ctrlMQPairsSet && len(data) == 2 && d.features&NetFMQ != 0:
		pairs := int(binary.LittleEndian.Uint16(data))
		if pairs >= 1 && pairs <= d.cfg.QueuePairs {
			s.activePairs = pairs
			ok = true
		}
	}
	if !ok {
		d.log.Info("control command refused", zap.Uint8("class", class), zap.Uint8("command", cmd), zap.Int("len", len(data)))
		return CtrlErr
	}
	return CtrlOK
}

// validMACTables checks a MAC_TABLE_SET payload: a unicast and a multicast
// table, each a le32 count followed by that many 6-byte addresses. The
// filter itself is not applied: the port delivers everything it receives.
func validMACTables(b []byte) bool {
	for range 2 {
		if len(b) < 4 {
			return false
		}
		n := uint64(binary.LittleEndian.Uint32(b))
		if uint64(len(b)-4) < 6*n {
			return false
		}
		b = b[4+6*n:]
	}
	return len(b) == 0
}
