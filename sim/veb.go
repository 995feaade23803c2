package sim

// The internal switch (VEB): with PFDTXGSWC.LBE set, the NIC delivers a
// frame a pool transmits to the other local pools it is for, in their RX
// queues, as the 82599 datasheet describes Tx packet switching (7.10.3).

const pfdtxgswcLBE = 1 << 0

// vebSwitch switches a frame pool transmitted (anti-spoofing passed).
// toWire says whether it goes to the network. A unicast frame whose
// destination address belongs to another local pool (an exact filter
// with that pool's MPSAR bit) stays inside; broadcast and multicast go out
// and to every other local pool that accepts them. The local pools are
// chosen by the receive rules (pool.go) without the default pool, and
// never include the sender. A unicast frame for a local address that no
// pool takes after the VLAN stage is dropped (Counters.RxNoPool).
func (p *PF) vebSwitch(pool int, f []byte, tagged bool) (toWire bool) {
	if p.reg(regPFDTXGSWC)&pfdtxgswcLBE == 0 {
		return true
	}
	self := uint64(1) << uint(pool)
	pools, mac, _ := p.selectPools(f, tagged, false)
	local := pools &^ self
	toWire = f[0]&1 != 0 || mac&^self == 0
	if local == 0 {
		if !toWire {
			p.mc.rxNoPool.Add(1)
		}
		return toWire
	}
	m := rxMeta{pools: local, loop: true}
	if p.admitPools(&m) {
		p.toFIFO(f, m)
	}
	return toWire
}
