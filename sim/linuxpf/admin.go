package linuxpf

import (
	"fmt"
)

// The administrator's policy, as `ip link set PF vf N ...` applies it
// through ixgbe's ndo_set_vf_* handlers.

// SetVFMAC is `ip link set PF vf N mac M` (ixgbe_ndo_set_vf_mac): a valid
// address goes into the RAR table for the VF's pool and becomes the
// administrator's (an untrusted VF may no longer change it); the zero
// address removes it. As in Linux the VF is not told: it learns the
// address from the reply to its next VF_RESET ("reload the VF driver").
func (h *Host) SetVFMAC(v int, mac [6]byte) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkVF(v); err != nil {
		return err
	}
	s := &h.vfs[v]
	switch {
	case validMAC(mac):
		if err := h.setVFMAC(v, mac); err != nil {
			return fmt.Errorf("linuxpf: VF %d MAC: no room in the RAR table", v)
		}
		s.pfSetMAC = true
	case mac == [6]byte{}:
		h.delMACFilter(s.mac, v)
		s.mac, s.pfSetMAC = [6]byte{}, false
	default:
		return fmt.Errorf("linuxpf: VF %d MAC %x: not a unicast address", v, mac)
	}
	return nil
}

// SetVFVLAN is `ip link set PF vf N vlan V qos Q` (ixgbe_ndo_set_vf_vlan):
// a port VLAN (the NIC inserts the tag, VMVIR, and steers by it;
// untagged receive is off for the pool) or, with 0/0, none.
func (h *Host) SetVFVLAN(v int, vlan uint16, qos uint8) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkVF(v); err != nil {
		return err
	}
	if vlan > 4095 || qos > 7 {
		return fmt.Errorf("linuxpf: VLAN %d qos %d out of range", vlan, qos)
	}
	s := &h.vfs[v]
	if s.vlan != 0 || s.qos != 0 {
		h.disablePortVLAN(v)
	}
	if vlan == 0 && qos == 0 {
		return nil
	}
	if err := h.setVFTA(vlan, v, true); err != nil {
		return fmt.Errorf("linuxpf: VF %d VLAN %d: no VLVF entry free", v, vlan)
	}
	_ = h.setVFTA(0, v, false) // no more untagged access through VLAN 0
	h.setVMVIR(v, vlan, qos)
	h.setVMOLR(v, false)
	s.vlan, s.qos = vlan, qos
	return nil
}

func (h *Host) disablePortVLAN(v int) {
	s := &h.vfs[v]
	_ = h.setVFTA(s.vlan, v, false)
	_ = h.setVFTA(0, v, true)
	h.wr(regPFVMVIR+4*uint32(v), 0)
	h.setVMOLR(v, true)
	s.vlan, s.qos = 0, 0
}

// SetVFTrust is `ip link set PF vf N trust on|off`: on a change the VF
// is restarted (no longer clear to send, a control message without CTS).
func (h *Host) SetVFTrust(v int, on bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkVF(v); err != nil {
		return err
	}
	s := &h.vfs[v]
	if s.trusted == on {
		return nil
	}
	s.trusted = on
	s.cts = false
	h.ping(v)
	return nil
}

// SetVFSpoofCheck is `ip link set PF vf N spoofchk on|off`: the pool's
// MAC and VLAN anti-spoofing (PFVFSPOOF).
func (h *Host) SetVFSpoofCheck(v int, on bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkVF(v); err != nil {
		return err
	}
	h.vfs[v].spoofchk = on
	h.setAntiSpoof(v, on)
	return nil
}

// SetVFLinkState is `ip link set PF vf N state auto|enable|disable`
// (ixgbe_ndo_set_vf_link_state): disable turns the pool's receive and
// transmit off; enable is not supported by ixgbe and changes nothing.
// Auto and disable restart the VF.
func (h *Host) SetVFLinkState(v int, st LinkState) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkVF(v); err != nil {
		return err
	}
	if st == LinkEnable {
		return nil
	}
	s := &h.vfs[v]
	s.link = st
	s.linkEnable = st == LinkAuto
	h.setVFRxTx(v)
	s.cts = false
	h.ping(v)
	return nil
}

// SetVFQueryRSS is `ip link set PF vf N query_rss on|off`: whether
// GET_RETA and GET_RSS_KEY are answered.
func (h *Host) SetVFQueryRSS(v int, on bool) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkVF(v); err != nil {
		return err
	}
	h.vfs[v].rssQuery = on
	return nil
}

// ResetVF makes the VF reset itself as the host's driver does when it
// restarts a VF (after a trust or link-state change, or a malicious
// driver event): the VF is no longer clear to send and gets a control
// message without CTS; until it sends VF_RESET every request is NACKed.
// For a reset of the VF function itself, see sim.PF.ResetVF.
func (h *Host) ResetVF(v int) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if err := h.checkVF(v); err != nil {
		return err
	}
	h.vfs[v].cts = false
	h.ping(v)
	return nil
}
