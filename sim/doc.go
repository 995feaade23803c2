// Package sim is a register-level model of the Intel 82599 10 GbE controller
// (physical function, device 8086:10FB), built from the datasheet as
// summarised in /work/shared/reference. It implements the vfio interfaces
// (Device, BAR, ConfigSpace, DMAMapper, IRQs), so a driver programs it
// exactly as it programs silicon: 32-bit register accesses on BAR0, PCI
// configuration space, and descriptors and buffers in memory the device can
// reach only through its IOMMU model. The model never calls into a driver.
//
// A PF owns one port. Frames arrive from the wire through Deliver (PF is a
// wire.Endpoint) and leave through the endpoint given to Attach. The two DMA
// engines run either deterministically, one pass per Step call, or freely in
// goroutines between Start and Stop.
//
// Modelled time: delays such as the EEPROM auto-read after a reset, the
// autonegotiation delay before LINKS reports link up, and the latency of
// RXDCTL/TXDCTL.ENABLE are counted in model ticks, not in wall time. Every
// BAR read and every engine pass is one tick, which is how a polling driver
// experiences time on silicon too: it keeps reading until the bit appears.
//
// Fault injection (FlapLink, DelayWriteBack, FailDMA, FailDMARange) makes
// the model produce the events a driver must survive: a link that drops
// and returns, completions written back late, DMA the IOMMU refuses. Each
// is counted where the hardware, or else the model (Counters), counts it.
//
// # Pools (VMDq) and the internal switch
//
// With PFVTCTL.VT_Ena set the model switches received frames to pools as
// the 82599 datasheet describes (7.10.3), driven by the registers a PF
// driver programs: RAL/RAH with MPSAR_LO/HI, PFVML2FLT (VMOLR: AUPE,
// ROMPE, ROPE, BAM, MPE), MTA and PFUTA with MCSTCTRL, PFVLVF/PFVLVFB,
// PFVTCTL (DEF_PL, DIS_DEFPL, Rpl_En), PFVFRE, PSRTYPE.RQPL and
// MRQC.MRQE. The rules, in order (pool.go):
//
//   - by destination address: the pools of every matching exact filter
//     (MPSAR); broadcast adds the pools with BAM; unicast with no exact
//     pool, the pools with ROPE if it hits PFUTA; multicast with no exact
//     pool, the pools with ROMPE if it hits the MTA; multicast adds the
//     pools with MPE (broadcast is left to BAM). The hash tables are
//     indexed as MCSTCTRL.MO selects and enabled by MCSTCTRL.MFE.
//   - by VLAN: untagged frames keep only the pools with AUPE; tagged ones,
//     when VLNCTRL.VFE is set, only the pools PFVLVFB lists for the
//     PFVLVF entry (VIEN set) of their VLAN, none if no entry matches.
//     VFTA still filters tagged frames first.
//   - a frame whose list is empty goes to the default pool DEF_PL, or with
//     DIS_DEFPL is dropped (Counters.RxNoPool; no register counts it);
//   - pools whose PFVFRE bit is clear (the PF's pool included; the reset
//     value enables none) lose their copy (Counters.RxPoolOff).
//   - without Rpl_En a frame goes to one pool: an exact match's lowest
//     MPSAR pool (software should set one), everything else to the
//     default pool.
//
// A frame the global filters (FCTRL, exact, MTA) reject still passes the
// MAC when a pool's own rule selects it; this is inferred (Linux turns on
// a VF's multicast promiscuous mode through VMOLR.MPE alone), the
// datasheet text was not at hand. The MAC counts a frame once (GPRC,
// GORC, BPRC, MPRC); the RX DMA writes one copy per pool, lowest pool
// first, each counted on its queue (QPRC, QBRC, QPRDC, RXDGPC) and the
// copies beyond the first in RXDDGPC/RXDDGBC. A copy waiting for
// descriptors holds the frame at the head of the packet buffer as a
// single frame does; copies already written are not repeated, RNBC counts
// once per waiting copy.
//
// Queues: MRQE 1000b is 64 pools of 2 queues (frames land in the pool's
// first), 1010b 32 pools of 4 and 1011b 64 pools of 2 with RSS: queue =
// pool*queues + (RETA entry & (2^RQPL - 1)), RQPL from the pool's PSRTYPE
// and at most the pool's queue count. The DCB modes 1100b (16x8) and
// 1101b (32x4) are laid out but frames go to the pool's first queue (no
// traffic class is picked); any other MRQE with VT_Ena is treated as
// 1000b.
//
// Transmit (txpool.go): with PFVTCTL.VT_Ena and MTQC.VT_Ena, TX queue q
// belongs to pool q/n, n = 2, 4 or 8 as MTQC.NUM_TC_OR_Q says (01b, 10b,
// 11b; 00b leaves the transmit side unvirtualized). A pool whose PFVFTE
// bit is clear is not serviced: its descriptors wait (nothing is
// dropped). PFVMVIR(pool) decides the VLAN tag a pool's frames leave
// with: VLANA (bits 31:30) 00b as the descriptor's VLE asks, 01b always
// the default tag VLAN_default (bits 15:0: VID, CFI, priority) in place
// of the descriptor's, 10b never a tag; 11b (reserved) is taken as 00b.
// A tag already in the frame's data stays as data (with 01b the frame
// leaves with two tags). Anti-spoofing and the internal switch see the
// frame as it leaves, the inserted tag included; the datasheet's text on
// that order was not at hand: Linux turns VLAN anti-spoofing on for a VF
// with a port VLAN and the VF sends untagged, which works either way.
// On receive a pool's queue strips the tag when its RXDCTL.VME is set
// (the descriptor reports it: status VP, the VLAN field), as without
// pools. PFVFSPOOF(pool/8) bit pool%8 (MAC anti-spoofing) drops a
// frame whose source address is not one of the pool's (a valid exact
// filter with the pool's MPSAR bit); bit 8+pool%8 (VLAN anti-spoofing)
// drops a tagged frame whose VLAN is not one of the pool's (PFVLVF entry
// with the pool's PFVLVFB bit; untagged frames pass). A spoofed frame is
// done with (its descriptors complete), counted in SSVPC when the pool's
// VMECM bit is set (Linux sets it for every VF) and always in
// Counters.TxSpoofed, and in no TX statistics.
//
// The internal switch (veb.go): with PFDTXGSWC.LBE set, a frame a pool
// transmits (anti-spoofing passed) is also run through the receive pool
// rules, without the default pool and never back to the sending pool. A
// unicast frame whose destination is an exact filter of another local
// pool stays inside: it is written to those pools' RX queues and never
// reaches the wire (if the VLAN stage leaves no pool it is dropped,
// Counters.RxNoPool); broadcast and multicast go to the wire and to every
// other local pool that accepts them; anything else goes to the wire
// only. A frame switched inside counts on its TX queue (QPTC, QBTC) and
// in TXDGPC/GBC but not in the MAC's GPTC/GOTC; on the receive side each
// copy counts on its queue, in RXDGPC and in RXLPBKGPC/GBC, the copies
// beyond the first in RXDLPBKGPC/GBC, never in GPRC. Switched frames
// wait in the receive packet buffer for the next RX pass. (The
// replication and loopback counter semantics are read from the
// registers' names; the datasheet text was not at hand.) A frame for the
// wire with the link down still reaches the local pools.
//
// Not modelled: mirroring (PFMRCTL and friends), ETQF pool steering,
// per-pool VLAN stripping and long-packet limits in VMOLR, PFQDE
// (queue drop enable), per-pool statistics (PVFGPRC...), PFVMTXSW (kept
// as storage: its meaning and reset value were not confirmed), the
// VLANA 11b encoding.
//
// # SR-IOV (sriov.go, vf.go, mailbox.go)
//
// The PF's configuration space carries the SR-IOV extended capability
// (at 0x160, as on an 82599: TotalVFs 64, VF offset 128, stride 2, VF
// device ID 10ED). Setting VF Enable with NumVFs n (EnableVFs) creates
// n VFs; each is a vfio.Device of its own (PF.VF) with its own
// configuration space, its own BAR 0 with the VF register map and its
// own IOMMU domain. VF v is pool v: its queue i is the PF's queue
// v*qpp+i (qpp from GCR_EXT.VT_Mode), run by the PF's engines with DMA
// through the VF's domain, counted in the VF's statistics (VFGPRC...,
// not cleared by reads) and interrupting through the VF's VTIVAR and
// VTEIMS. The mailbox hardware (mailbox.go) joins each VF to its PF;
// the PF side of the protocol is the PF driver's (sim/linuxpf stands in
// for Linux's). VFLINKS shows the port's link. PF.ResetVF resets a VF
// from outside. Not modelled: the VF's MSI-X BAR (BAR 3), VF interrupt
// throttling, VFRSCCTL's effect, the X550-only VF RSS registers, the
// PVF* PF-side aliases of VF registers, and which EICR cause (if any) a
// VF reset event raises on the PF.
package sim
