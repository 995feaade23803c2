package linuxpf

import (
	"testing"
)

var (
	macA = [6]byte{0x02, 0xAA, 0, 0, 0, 1}
	macB = [6]byte{0x02, 0xBB, 0, 0, 0, 2}
	macC = [6]byte{0x02, 0xCC, 0, 0, 0, 3}
)

// Before VF_RESET a request is NACKed with one word and no CTS; the reset
// reply has no CTS, NACK without an administrator's MAC, ACK and the MAC
// with one, and the multicast filter type in word 3.
func TestResetHandshake(t *testing.T) {
	r := newRig(t, Config{NumVFs: 2})
	d := r.vf(0)
	if d.mbx()&mbRSTD == 0 && d.cache&mbRSTD == 0 {
		t.Fatal("the VF did not see the PF's reset done")
	}
	got := d.request(msgAPINegotiate, uint32(API13))
	if got[0] != msgAPINegotiate|flagNACK {
		t.Fatalf("request before reset answered %#x, want API_NEGOTIATE|NACK without CTS", got[0])
	}
	rep := d.reset()
	if rep[0] != msgReset|flagNACK || rep[1] != 0 || rep[3] != 0 {
		t.Fatalf("reset reply without an admin MAC: %#x", rep)
	}
	if err := r.host.SetVFMAC(0, macA); err != nil {
		t.Fatal(err)
	}
	rep = d.reset()
	lo, hi := mac2words(macA)
	if rep[0] != msgReset|flagACK || rep[1] != lo || rep[2]&0xFFFF != hi {
		t.Fatalf("reset reply with admin MAC %x: %#x", macA, rep)
	}
	info, _ := r.host.Info(0)
	if !info.ClearToSend || info.Resets != 2 || info.ResetEvents == 0 {
		t.Fatalf("host state after reset: %+v", info)
	}
}

// API_NEGOTIATE accepts what Linux's PF accepts (1.0-1.4), newest first
// as a VF tries; GET_QUEUES needs 1.1 or later.
func TestAPINegotiation(t *testing.T) {
	r := newRig(t, Config{NumVFs: 1})
	d := r.vf(0)
	d.reset()
	if got := d.request(msgGetQueues, 0, 0, 0, 0); got[0] != msgGetQueues|flagNACK|flagCTS {
		t.Fatalf("GET_QUEUES at API 1.0: %#x", got[0])
	}
	for _, api := range []API{API17, API16, API15} {
		if got := d.request(msgAPINegotiate, uint32(api)); got[0] != msgAPINegotiate|flagNACK|flagCTS {
			t.Fatalf("API enum %d accepted: %#x", api, got[0])
		}
	}
	for _, api := range LinuxAPIs {
		if got := d.request(msgAPINegotiate, uint32(api)); got[0] != msgAPINegotiate|flagACK|flagCTS {
			t.Fatalf("API enum %d refused: %#x", api, got[0])
		}
	}
	got := d.request(msgGetQueues, 0, 0, 0, 0)
	if got[0] != msgGetQueues|flagACK|flagCTS || got[1] != 4 || got[2] != 4 || got[3] != 0 || got[4] != 0 {
		t.Fatalf("GET_QUEUES at 1.4 with 1 VF (32 pools of 4): %#x", got[:5])
	}
	if got := d.request(msgGetLinkState, 0); got[0] != msgGetLinkState|flagACK|flagCTS || got[1] != 1 {
		t.Fatalf("GET_LINK_STATE: %#x", got[:2])
	}
	// RETA and key only with query_rss on.
	if got := d.request(msgGetRETA); got[0]&flagNACK == 0 {
		t.Fatalf("GET_RETA answered without query_rss: %#x", got[0])
	}
	_ = r.host.SetVFQueryRSS(0, true)
	if got := d.request(msgGetRETA); got[0] != msgGetRETA|flagACK|flagCTS || got[1] != 0xE4E4E4E4 {
		t.Fatalf("GET_RETA: %#x", got[:2])
	}
	if got := d.request(msgGetRSSKey); got[0] != msgGetRSSKey|flagACK|flagCTS || got[1] == 0 {
		t.Fatalf("GET_RSS_KEY: %#x", got[:2])
	}
}

// SET_MAC_ADDR under the administrator's policy: free without an admin
// MAC, refused for an untrusted VF with one, allowed once trusted (the
// trust change restarts the VF with a control message without CTS).
func TestSetMACPolicy(t *testing.T) {
	r := newRig(t, Config{NumVFs: 2})
	d := r.vf(1)
	d.reset()
	lo, hi := mac2words(macB)
	if got := d.request(msgSetMACAddr, lo, hi); got[0] != msgSetMACAddr|flagACK|flagCTS {
		t.Fatalf("SET_MAC_ADDR without admin MAC: %#x", got[0])
	}
	if got := d.request(msgSetMACAddr, 0x01, 0); got[0]&flagNACK == 0 { // multicast
		t.Fatalf("multicast address accepted: %#x", got[0])
	}
	_ = r.host.SetVFMAC(1, macA)
	d.reset()
	if got := d.request(msgSetMACAddr, lo, hi); got[0] != msgSetMACAddr|flagNACK|flagCTS {
		t.Fatalf("untrusted VF changed the admin MAC: %#x", got[0])
	}
	if got := d.request(msgSetMACVLAN|1<<16, lo, hi); got[0]&flagNACK == 0 {
		t.Fatalf("untrusted VF added a MACVLAN under an admin MAC: %#x", got[0])
	}
	_ = r.host.SetVFTrust(1, true)
	if ping := d.recv(); ping[0] != msgControl {
		t.Fatalf("trust change: got %#x, want a control message without CTS", ping[0])
	}
	if got := d.request(msgSetMACAddr, lo, hi); got[0] != msgSetMACAddr|flagNACK {
		t.Fatalf("request while not clear to send: %#x", got[0])
	}
	d.reset()
	if got := d.request(msgSetMACAddr, lo, hi); got[0] != msgSetMACAddr|flagACK|flagCTS {
		t.Fatalf("trusted VF: %#x", got[0])
	}
	if info, _ := r.host.Info(1); info.MAC != macB {
		t.Fatalf("VF MAC %x, want %x", info.MAC, macB)
	}
}

// UPDATE_XCAST_MODE: an untrusted VF gets at most MULTI (whatever it
// asks); a trusted one gets ALLMULTI but not promiscuous, which the 82599
// refuses; API 1.2 refuses promiscuous outright.
func TestXcastMode(t *testing.T) {
	r := newRig(t, Config{NumVFs: 1})
	d := r.vf(0)
	d.reset()
	d.request(msgAPINegotiate, uint32(API14))
	if got := d.request(msgUpdateXcastMode, XcastAllMulti); got[0] != msgUpdateXcastMode|flagACK|flagCTS || got[1] != XcastMulti {
		t.Fatalf("untrusted ALLMULTI: %#x", got[:2])
	}
	if got := d.request(msgUpdateXcastMode, XcastPromisc); got[0] != msgUpdateXcastMode|flagACK|flagCTS || got[1] != XcastMulti {
		t.Fatalf("untrusted PROMISC: %#x, want MULTI applied", got[:2])
	}
	_ = r.host.SetVFTrust(0, true)
	d.recv()
	d.reset()
	d.request(msgAPINegotiate, uint32(API14))
	if got := d.request(msgUpdateXcastMode, XcastAllMulti); got[1] != XcastAllMulti {
		t.Fatalf("trusted ALLMULTI: %#x", got[:2])
	}
	if got := d.request(msgUpdateXcastMode, XcastPromisc); got[0] != msgUpdateXcastMode|flagNACK|flagCTS {
		t.Fatalf("trusted PROMISC on an 82599: %#x, want NACK", got[0])
	}
	d.request(msgAPINegotiate, uint32(API12))
	if got := d.request(msgUpdateXcastMode, XcastPromisc); got[0]&flagNACK == 0 {
		t.Fatalf("PROMISC at API 1.2: %#x", got[0])
	}
}

// Traffic: a frame for the VF's MAC lands in the VF's own memory, VF to
// VF stays inside the NIC, anti-spoofing drops a VF's frame from another
// address.
func TestVFTraffic(t *testing.T) {
	r := newRig(t, Config{NumVFs: 2})
	a, b := r.vf(0), r.vf(1)
	_ = r.host.SetVFMAC(0, macA)
	_ = r.host.SetVFMAC(1, macB)
	a.reset()
	b.reset()
	a.rxQueue(8)
	b.rxQueue(8)
	fromWire := frame(macA, macC, 1)
	r.pf.Deliver(fromWire)
	r.pf.Deliver(frame(macC, macC, 9)) // nobody's
	for i := 0; i < 4; i++ {
		r.pf.Step()
	}
	if got := a.received(); len(got) != 1 || !contains(got, fromWire) {
		t.Fatalf("VF 0 received %d frames, want the one for its MAC", len(got))
	}
	if got := b.received(); len(got) != 0 {
		t.Fatalf("VF 1 received %d frames for another MAC", len(got))
	}
	// VF 1 -> VF 0 inside the NIC.
	inside := frame(macA, macB, 2)
	b.transmit(inside, b.iova+0x20000)
	for i := 0; i < 4; i++ {
		r.pf.Step()
	}
	if got := a.received(); len(got) != 2 || !contains(got, inside) {
		t.Fatalf("VF 0 has %d frames, want VF 1's too", len(got))
	}
	if contains(r.sent(), inside) {
		t.Fatal("VF-to-VF frame reached the wire")
	}
	// VF 1 to the wire, then spoofing another source.
	out := frame(macC, macB, 3)
	b.transmit(out, b.iova+0x20800)
	spoof := frame(macC, macA, 4)
	b.transmit(spoof, b.iova+0x21000)
	for i := 0; i < 4; i++ {
		r.pf.Step()
	}
	if !contains(r.sent(), out) || contains(r.sent(), spoof) {
		t.Fatal("VF 1's own frame did not reach the wire, or its spoofed one did")
	}
	if got := b.bar.Read32(vVFGPTC); got != 2 {
		t.Fatalf("VFGPTC = %d, want 2 (the spoofed frame is not counted)", got)
	}
	if got := a.bar.Read32(vVFGPRC); got != 2 || a.bar.Read32(vVFGPRC) != 2 {
		t.Fatalf("VFGPRC = %d, want 2, not cleared by reading", got)
	}
	if f, _ := a.vf.IOMMU().Faults(); f != 0 {
		t.Fatalf("%d IOMMU faults in VF 0's domain", f)
	}
}

// A VF's DMA reaches only its own domain: a descriptor naming an IOVA
// mapped only in VF 0's domain faults in VF 1's, and VF 0's memory is
// untouched.
func TestVFDMAIsolation(t *testing.T) {
	r := newRig(t, Config{NumVFs: 2})
	a, b := r.vf(0), r.vf(1)
	_ = r.host.SetVFMAC(1, macB)
	a.reset()
	b.reset()
	secret := frame(macC, macB, 0x5A)
	copy(a.mem[0x40000:], secret)
	a.vf.IOMMU() // VF 0 maps 0x1000_0000..+1 MiB; VF 1 the same IOVAs, other pages
	// VF 1 points a descriptor at an IOVA only VF 0 has mapped.
	other := uint64(0x2000_0000)
	if err := a.vf.DMA().MapDMA(other, a.mem[0x40000:0x41000]); err != nil {
		t.Fatal(err)
	}
	b.transmit(secret, other)
	for i := 0; i < 4; i++ {
		r.pf.Step()
	}
	if n, last := b.vf.IOMMU().Faults(); n == 0 || last != other {
		t.Fatalf("VF 1's DMA outside its domain: %d faults (last %#x)", n, last)
	}
	if contains(r.sent(), secret) {
		t.Fatal("VF 1 sent VF 0's memory")
	}
	if n, _ := a.vf.IOMMU().Faults(); n != 0 {
		t.Fatal("VF 0's domain saw VF 1's access")
	}
}

// A PF-initiated reset: the host restarts the VF (control message
// without CTS), or the VF function is reset from outside (RSTD, queues
// stopped).
func TestPFInitiatedReset(t *testing.T) {
	r := newRig(t, Config{NumVFs: 1})
	d := r.vf(0)
	_ = r.host.SetVFMAC(0, macA)
	d.reset()
	d.rxQueue(8)
	if err := r.host.ResetVF(0); err != nil {
		t.Fatal(err)
	}
	if m := d.bar.Read32(vVFMBMEM); m != msgControl {
		t.Fatalf("VFMBMEM word 0 %#x, want a control message without CTS", m)
	}
	d.recv()
	if rep := d.reset(); rep[0] != msgReset|flagACK {
		t.Fatalf("reset after the host's restart: %#x", rep[0])
	}
	if err := r.pf.ResetVF(0); err != nil {
		t.Fatal(err)
	}
	if d.mbx()&mbRSTD == 0 {
		t.Fatal("no RSTD after the VF function reset")
	}
	if d.bar.Read32(vRx(0, 0x28))&(1<<25) != 0 {
		t.Fatal("RX queue still enabled after the VF function reset")
	}
	r.host.Step()
	if info, _ := r.host.Info(0); info.ResetEvents < 2 {
		t.Fatalf("host handled %d reset events", info.ResetEvents)
	}
	// A link change pings every VF, with CTS while it is clear to send.
	d.reset()
	r.pf.FlapLink(5)
	if got := d.recv(); got[0] != msgControl|flagCTS {
		t.Fatalf("link change ping %#x", got[0])
	}
}

// Run services the mailbox on its own: the VF polls, nothing steps.
func TestRunServicesMailbox(t *testing.T) {
	r := newRig(t, Config{NumVFs: 1})
	r.host.Run()
	defer r.host.Stop()
	d := r.vf(0)
	d.bar.Write32(vVFCTRL, 1<<26)
	d.bar.Write32(vVFMAILBOX, mbVFU)
	d.bar.Write32(vVFMBMEM, msgReset)
	d.bar.Write32(vVFMAILBOX, mbREQ)
	for i := 0; i < 1_000_000 && d.cache&mbPFSTS == 0; i++ {
		d.mbx()
	}
	if d.cache&mbPFSTS == 0 || d.bar.Read32(vVFMBMEM) != msgReset|flagNACK {
		t.Fatalf("no reset reply from the running host (word 0 %#x)", d.bar.Read32(vVFMBMEM))
	}
}
