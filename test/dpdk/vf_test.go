package dpdk_test

import (
	"testing"

	"github.com/zcnet/zcnet/sim/rig"
)

// zcVFScenario is testpmd as the guest of an SR-IOV VF, the usual
// deployment of one VF (and one IOMMU domain) per guest: the appliance's
// NIC port is VF 0 of a simulated 82599 whose PF the host's Linux driver
// keeps (sim/linuxpf), the guest has the MAC the host's administrator
// gave the VF, and the generator sends it exactly 10000 frames.
var zcVFScenario = zcScenario{name: "vf0-split-mrg", devargs: "mrg_rxbuf=1", mrg: true, mbuf: zcMbufSize, vf: true, frames: 10000}

// TestZeroCopyTestpmdOnVF runs TestZeroCopyTestpmd's checks (every frame
// back intact, in order, once; every one zero-copy both ways; nothing
// dropped; testpmd's counters equal to the engine's) with the NIC port a
// VF, then checks the VF's side: what it counted, nothing outside its
// own IOMMU domain, no reset, and the host's view of it.
func TestZeroCopyTestpmdOnVF(t *testing.T) {
	h := checkHost(t, 1)
	sc := zcVFScenario
	r := runZeroCopy(t, h, sc)
	if r.Port.VF == nil {
		t.Fatalf("the rig's NIC port %+v is not a VF", r.Port)
	}
	n := r.App.Snapshot("test").NICs[0]
	t.Logf("VF %s: %+v", n.Name, n)
	if n.RxPackets < sc.frames || n.TxPackets < sc.frames {
		t.Errorf("the VF counted %d frames received and %d sent, want %d each at least", n.RxPackets, n.TxPackets, sc.frames)
	}
	if n.VFResets == nil || *n.VFResets != 0 {
		t.Errorf("VF resets %v, want 0 counted", n.VFResets)
	}
	if faults, last := r.Port.VF.IOMMU().Faults(); faults != 0 {
		t.Errorf("%d IOMMU faults in the VF's domain (last at IOVA %#x)", faults, last)
	}
	hi, err := r.Port.Host.Info(0)
	if err != nil {
		t.Fatal(err)
	}
	if hi.MAC != rig.VFMAC(zcVFPCI) || !hi.ClearToSend {
		t.Errorf("the host's view of VF 0: %+v, want its MAC %x and clear to send", hi, rig.VFMAC(zcVFPCI))
	}
}
