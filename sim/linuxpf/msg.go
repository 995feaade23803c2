package linuxpf

import "errors"

// The PF side of the mailbox messages, as ixgbe_sriov.c handles them.

var (
	errRefused = errors.New("refused")
	errNoSpace = errors.New("no space")
)

// rcvMsg is ixgbe_rcv_msg_from_vf.
func (h *Host) rcvMsg(v int) {
	msg, ok := h.readMbx(v)
	if !ok {
		return
	}
	s := &h.vfs[v]
	if msg[0]&(flagACK|flagNACK) != 0 {
		return // a message already processed
	}
	s.lastReq = msg[0]
	s.msgs++
	if msg[0] == msgReset {
		h.vfResetMsg(v)
		return
	}
	if !s.cts {
		// Until the VF has reset it may not configure anything.
		s.nacks++
		h.writeMbx(v, []uint32{msg[0] | flagNACK})
		return
	}
	var err error
	switch msg[0] & 0xFFFF {
	case msgSetMACAddr:
		err = h.setVFMACAddr(v, macOf(msg[1:3]))
	case msgSetMulticast:
		h.setVFMulticasts(v, &msg)
	case msgSetVLAN:
		err = h.setVFVLANMsg(v, &msg)
	case msgSetLPE:
		err = h.setVFLPE(v, msg[1])
	case msgSetMACVLAN:
		err = h.setVFMACVLANMsg(v, &msg)
	case msgAPINegotiate:
		err = errRefused
		for _, a := range h.conf.APIs {
			if API(msg[1]) == a {
				s.api, err = a, nil
			}
		}
	case msgGetQueues:
		err = h.getVFQueues(v, &msg)
	case msgGetRETA:
		err = h.getVFRETA(v, &msg)
	case msgGetRSSKey:
		err = h.getVFRSSKey(v, &msg)
	case msgUpdateXcastMode:
		err = h.updateVFXcastMode(v, &msg)
	case msgGetLinkState:
		if !s.apiIn(API12, API13, API14, API16, API17) {
			err = errRefused
		} else {
			msg[1] = b2u(s.linkEnable)
		}
	default:
		// IPSEC_ADD/DEL (VF IPsec offload is off unless the host enables
		// it), GET_PF_LINK_STATE (E610 only), FEATURES_NEGOTIATE (1.7),
		// and anything unknown.
		err = errRefused
	}
	if err != nil {
		msg[0] |= flagNACK
		s.nacks++
	} else {
		msg[0] |= flagACK
	}
	msg[0] |= flagCTS
	h.writeMbx(v, msg[:])
}

func (s *vfState) apiIn(apis ...API) bool {
	for _, a := range apis {
		if s.api == a {
			return true
		}
	}
	return false
}

func b2u(b bool) uint32 {
	if b {
		return 1
	}
	return 0
}

func macOf(w []uint32) [6]byte {
	return [6]byte{byte(w[0]), byte(w[0] >> 8), byte(w[0] >> 16), byte(w[0] >> 24), byte(w[1]), byte(w[1] >> 8)}
}

func validMAC(m [6]byte) bool { return m[0]&1 == 0 && m != [6]byte{} }

// vfResetMsg is ixgbe_vf_reset_msg: filters reset, the VF's MAC back in
// the RAR table, queue drop enable, receive and transmit enabled, clear
// to send, spoofed-packet counting, the head write-back addresses
// cleared, and the 4-word reply without CTS: RESET|ACK with the MAC when
// the administrator set one, else RESET|NACK; word 3 the multicast
// filter type.
func (h *Host) vfResetMsg(v int) {
	s := &h.vfs[v]
	s.resets++
	h.vfResetEvent(v)
	for i := uint32(0); i < mbxWords; i++ {
		h.wr(regPFMBMEM+64*uint32(v)+4*i, 0)
	}
	if s.mac != [6]byte{} {
		h.setVFMAC(v, s.mac)
	}
	qde := uint32(qdeEnable)
	if s.vlan != 0 {
		qde |= qdeHideVLAN
	}
	for q := v * h.qpp; q < (v+1)*h.qpp; q++ {
		h.wr(regPFQDE, qdeWrite|qde|uint32(q)<<8)
	}
	h.setVFRxTx(v)
	s.cts = true
	h.bit64(regVMECM, v, true)
	for q := v * h.qpp; q < (v+1)*h.qpp; q++ {
		h.wr(0x0603C+0x40*uint32(q), 0) // TDWBAH
		h.wr(0x06038+0x40*uint32(q), 0) // TDWBAL
	}
	reply := []uint32{msgReset, 0, 0, h.rd(regMCSTCTRL) & 3}
	if s.mac != [6]byte{} && s.pfSetMAC {
		reply[0] |= flagACK
		reply[1] = uint32(s.mac[0]) | uint32(s.mac[1])<<8 | uint32(s.mac[2])<<16 | uint32(s.mac[3])<<24
		reply[2] = uint32(s.mac[4]) | uint32(s.mac[5])<<8
	} else {
		reply[0] |= flagNACK
	}
	h.writeMbx(v, reply)
}

// vfResetEvent is ixgbe_vf_reset_event: the VF's VLANs removed and the
// port VLAN (or VLAN 0) put back, VMOLR and VMVIR reset, anti-spoofing
// for a port VLAN, multicast hashes dropped, the VF's MAC filter and
// MACVLANs removed, the API back to 1.0.
func (h *Host) vfResetEvent(v int) {
	s := &h.vfs[v]
	h.clearVFVLANs(v)
	_ = h.setVFTA(s.vlan, v, true)
	h.setVMOLR(v, s.vlan == 0)
	if s.vlan == 0 && s.qos == 0 {
		h.wr(regPFVMVIR+4*uint32(v), 0)
	} else {
		h.setVMVIR(v, s.vlan, s.qos)
		if s.spoofchk {
			h.setAntiSpoof(v, true)
		}
	}
	s.mc = nil
	h.restoreMTA()
	h.delMACFilter(s.mac, v)
	h.clearMACVLANs(v)
	s.api = API10
}

func (h *Host) setVMOLR(v int, aupe bool) {
	r := regPFVML2FLT + 4*uint32(v)
	x := h.rd(r) | vmolrBAM
	if aupe {
		x |= vmolrAUPE
	} else {
		x &^= vmolrAUPE
	}
	h.wr(r, x)
}

// setVMVIR: always insert the default tag (VLANA 01b), VID and priority.
func (h *Host) setVMVIR(v int, vlan uint16, qos uint8) {
	h.wr(regPFVMVIR+4*uint32(v), 1<<30|uint32(qos)<<13|uint32(vlan))
}

// setAntiSpoof sets the VF's MAC and VLAN anti-spoofing bits.
func (h *Host) setAntiSpoof(v int, on bool) {
	r := regPFVFSPOOF + 4*uint32(v/8)
	bits := uint32(1)<<uint(v%8) | uint32(1)<<uint(8+v%8)
	if on {
		h.set(r, bits)
	} else {
		h.clr(r, bits)
	}
}

// setVFRxTx is ixgbe_set_vf_rx_tx: receive and transmit follow the
// administrator's link setting; the 82599 cannot mix jumbo and non-jumbo,
// so a jumbo PF keeps the VF's receive off.
func (h *Host) setVFRxTx(v int) {
	on := h.vfs[v].linkEnable
	h.bit64(regPFVFTE, v, on)
	h.bit64(regPFVFRE, v, on && h.conf.MTU+14 <= 1514)
}

// setVFMAC is ixgbe_set_vf_mac: the old filter out, the new one in.
func (h *Host) setVFMAC(v int, mac [6]byte) error {
	s := &h.vfs[v]
	h.delMACFilter(s.mac, v)
	if err := h.addMACFilter(mac, v); err != nil {
		s.mac = [6]byte{}
		return err
	}
	s.mac = mac
	return nil
}

// setVFMACAddr is ixgbe_set_vf_mac_addr: an invalid address, or a
// change of an address the administrator set for an untrusted VF, is
// refused.
func (h *Host) setVFMACAddr(v int, mac [6]byte) error {
	s := &h.vfs[v]
	if !validMAC(mac) {
		return errRefused
	}
	if s.pfSetMAC && !s.trusted && s.mac != mac {
		return errRefused
	}
	return h.setVFMAC(v, mac)
}

// addMACFilter puts mac in the RAR table for pool v: an entry already
// holding it gains the pool's MPSAR bit, else the first free entry.
func (h *Host) addMACFilter(mac [6]byte, v int) error {
	lo := uint32(mac[0]) | uint32(mac[1])<<8 | uint32(mac[2])<<16 | uint32(mac[3])<<24
	hi := uint32(mac[4]) | uint32(mac[5])<<8
	free := -1
	for i := uint32(1); i < numRAR; i++ {
		rah := h.rd(regRAL + 8*i + 4)
		if rah&rahAV == 0 {
			if free < 0 {
				free = int(i)
			}
			continue
		}
		if h.rd(regRAL+8*i) == lo && rah&0xFFFF == hi {
			h.bit64(regMPSAR+8*i, v, true)
			return nil
		}
	}
	if free < 0 {
		return errNoSpace
	}
	i := uint32(free)
	h.wr(regMPSAR+8*i, 0)
	h.wr(regMPSAR+8*i+4, 0)
	h.bit64(regMPSAR+8*i, v, true)
	h.wr(regRAL+8*i, lo)
	h.wr(regRAL+8*i+4, hi|rahAV)
	return nil
}

// delMACFilter drops pool v from mac's entry, freeing it when no pool
// is left.
func (h *Host) delMACFilter(mac [6]byte, v int) {
	if mac == [6]byte{} {
		return
	}
	lo := uint32(mac[0]) | uint32(mac[1])<<8 | uint32(mac[2])<<16 | uint32(mac[3])<<24
	hi := uint32(mac[4]) | uint32(mac[5])<<8
	for i := uint32(1); i < numRAR; i++ {
		rah := h.rd(regRAL + 8*i + 4)
		if rah&rahAV == 0 || h.rd(regRAL+8*i) != lo || rah&0xFFFF != hi {
			continue
		}
		h.bit64(regMPSAR+8*i, v, false)
		if h.rd(regMPSAR+8*i) == 0 && h.rd(regMPSAR+8*i+4) == 0 {
			h.wr(regRAL+8*i+4, 0)
			h.wr(regRAL+8*i, 0)
		}
	}
}

// setVFMulticasts is ixgbe_set_vf_multicasts: up to 30 hashes, two per
// word from word 1; their MTA bits set and VMOLR.ROMPE.
func (h *Host) setVFMulticasts(v int, msg *[mbxWords]uint32) {
	n := min(int(msg[0]>>16&0xFF), 30)
	mc := make([]uint16, n)
	for i := range mc {
		mc[i] = uint16(msg[1+i/2] >> (16 * uint(i%2)))
	}
	h.vfs[v].mc = mc
	h.restoreMTA()
	h.set(regPFVML2FLT+4*uint32(v), vmolrROMPE)
}

// restoreMTA rebuilds the MTA from every VF's hashes (the PF itself
// joins no multicast group here), as ixgbe_set_rx_mode does.
func (h *Host) restoreMTA() {
	var mta [128]uint32
	for _, s := range h.vfs {
		for _, x := range s.mc {
			mta[x>>5&0x7F] |= 1 << (x & 0x1F)
		}
	}
	for i, w := range mta {
		h.wr(regMTA+4*uint32(i), w)
	}
}

// setVFVLANMsg is ixgbe_set_vf_vlan_msg: refused under a port VLAN;
// removing VLAN 0 is a no-op.
func (h *Host) setVFVLANMsg(v int, msg *[mbxWords]uint32) error {
	add := msg[0]>>16&0xFF != 0
	vid := uint16(msg[1] & 0xFFF)
	if h.vfs[v].vlan != 0 {
		return errRefused
	}
	if vid == 0 && !add {
		return nil
	}
	return h.setVFTA(vid, v, add)
}

// setVFTA adds or removes pool v in the VLVF entry for vid (allocating
// or freeing it) and keeps VFTA in step.
func (h *Host) setVFTA(vid uint16, v int, add bool) error {
	entry, free := -1, -1
	for i := 0; i < numVLV; i++ {
		x := h.rd(regPFVLVF + 4*uint32(i))
		if x&vlvfVIEN != 0 && uint16(x&0xFFF) == vid {
			entry = i
			break
		}
		if x == 0 && free < 0 {
			free = i
		}
	}
	if entry < 0 {
		if !add {
			return nil
		}
		if free < 0 {
			return errNoSpace
		}
		entry = free
		h.wr(regPFVLVF+4*uint32(entry), vlvfVIEN|uint32(vid))
		h.wr(regPFVLVFB+8*uint32(entry), 0)
		h.wr(regPFVLVFB+8*uint32(entry)+4, 0)
	}
	b := regPFVLVFB + 8*uint32(entry)
	h.bit64(b, v, add)
	if add {
		h.set(regVFTA+4*uint32(vid>>5), 1<<(vid&31))
		return nil
	}
	if h.rd(b) == 0 && h.rd(b+4) == 0 {
		h.wr(regPFVLVF+4*uint32(entry), 0)
		h.clr(regVFTA+4*uint32(vid>>5), 1<<(vid&31))
	}
	return nil
}

// clearVFVLANs is ixgbe_clear_vf_vlans.
func (h *Host) clearVFVLANs(v int) {
	for i := 0; i < numVLV; i++ {
		x := h.rd(regPFVLVF + 4*uint32(i))
		b := regPFVLVFB + 8*uint32(i)
		if x&vlvfVIEN == 0 || h.rd(b+4*uint32(v/32))&(1<<uint(v%32)) == 0 {
			continue
		}
		_ = h.setVFTA(uint16(x&0xFFF), v, false)
	}
}

// setVFLPE is ixgbe_set_vf_lpe on the 82599: a VF at API 1.1 or later
// may use jumbo frames only when the PF does; otherwise a request above
// 1518 bytes (or any request under a jumbo PF at API 1.0) is refused and
// the VF's receive turned off. MAXFRS grows to the largest request.
func (h *Host) setVFLPE(v int, maxFrame uint32) error {
	if maxFrame < 68 || maxFrame > 9728 {
		return errRefused
	}
	s := &h.vfs[v]
	pfMax := uint32(h.conf.MTU + 14)
	var err error
	if s.api == API10 || pfMax <= 1514 {
		if pfMax > 1514 || maxFrame > 1518 {
			err = errRefused
		}
	}
	// Linux sets VFRE on success (a jumbo VF at 1.1 up under a jumbo
	// PF receives: that is the point of 1.1) and clears it on error.
	h.bit64(regPFVFRE, v, err == nil && s.linkEnable)
	if err != nil {
		return err
	}
	if cur := h.rd(regMAXFRS) >> 16; cur < maxFrame {
		h.wr(regMAXFRS, maxFrame<<16)
	}
	return nil
}

// setVFMACVLANMsg is ixgbe_set_vf_macvlan_msg.
func (h *Host) setVFMACVLANMsg(v int, msg *[mbxWords]uint32) error {
	s := &h.vfs[v]
	index := int(msg[0] >> 16 & 0xFF)
	mac := macOf(msg[1:3])
	if s.pfSetMAC && !s.trusted && index > 0 {
		return errRefused
	}
	if index > 0 {
		if !validMAC(mac) {
			return errRefused
		}
		if s.spoofchk {
			h.setAntiSpoof(v, false) // a VF with filters of its own would be caught
		}
	}
	if index <= 1 {
		h.clearMACVLANs(v)
	}
	if index == 0 {
		return nil
	}
	if h.usedMV >= h.maxMV {
		return errNoSpace
	}
	if err := h.addMACFilter(mac, v); err != nil {
		return err
	}
	s.macvlans = append(s.macvlans, mac)
	h.usedMV++
	return nil
}

func (h *Host) clearMACVLANs(v int) {
	s := &h.vfs[v]
	for _, m := range s.macvlans {
		h.delMACFilter(m, v)
		h.usedMV--
	}
	s.macvlans = nil
}

// getVFQueues is ixgbe_get_vf_queues (API 2.0 and 1.1 up).
func (h *Host) getVFQueues(v int, msg *[mbxWords]uint32) error {
	s := &h.vfs[v]
	if !s.apiIn(API20, API11, API12, API13, API14, API16, API17) {
		return errRefused
	}
	msg[1] = uint32(h.qpp) // TX queues
	msg[2] = uint32(h.qpp) // RX queues
	msg[3] = b2u(s.vlan != 0 || s.qos != 0)
	msg[4] = 0 // default queue
	return nil
}

// getVFRETA is ixgbe_get_vf_reta: allowed only with query_rss on and API
// 1.2 up; 128 entries, 2 bits each, 16 to a word.
func (h *Host) getVFRETA(v int, msg *[mbxWords]uint32) error {
	s := &h.vfs[v]
	if !s.rssQuery || !s.apiIn(API12, API13, API14, API16, API17) {
		return errRefused
	}
	for i := 0; i < 8; i++ {
		var w uint32
		for j := 0; j < 16; j++ {
			e := 16*i + j
			entry := h.rd(regRETA+4*uint32(e/4)) >> (8 * uint(e%4)) & 0xFF
			w |= (entry & 3) << (2 * uint(j))
		}
		msg[1+i] = w
	}
	return nil
}

// getVFRSSKey is ixgbe_get_vf_rss_key: the 40-byte key.
func (h *Host) getVFRSSKey(v int, msg *[mbxWords]uint32) error {
	s := &h.vfs[v]
	if !s.rssQuery || !s.apiIn(API12, API13, API14, API16, API17) {
		return errRefused
	}
	for i := 0; i < 10; i++ {
		msg[1+i] = h.rd(regRSSRK + 4*uint32(i))
	}
	return nil
}

// updateVFXcastMode is ixgbe_update_vf_xcast_mode: API 1.2 (no
// promiscuous) or later; an untrusted VF gets at most MULTI; promiscuous
// is refused on the 82599. Word 1 of the reply is the mode applied.
func (h *Host) updateVFXcastMode(v int, msg *[mbxWords]uint32) error {
	s := &h.vfs[v]
	mode := int(msg[1])
	switch {
	case s.api == API12:
		if mode == XcastPromisc {
			return errRefused
		}
	case s.apiIn(API13, API14, API16, API17):
	default:
		return errRefused
	}
	if mode > XcastMulti && !s.trusted {
		mode = XcastMulti
	}
	if mode != s.xcast {
		var enable, disable uint32
		switch mode {
		case XcastNone:
			disable, enable = vmolrROMPE|vmolrMPE, vmolrBAM
		case XcastMulti:
			disable, enable = vmolrMPE, vmolrBAM|vmolrROMPE
		case XcastAllMulti:
			enable = vmolrBAM | vmolrROMPE | vmolrMPE
		default: // promiscuous: not on the 82599; anything else unknown
			return errRefused
		}
		r := regPFVML2FLT + 4*uint32(v)
		h.wr(r, h.rd(r)&^disable|enable)
		s.xcast = mode
	}
	msg[1] = uint32(mode)
	return nil
}
