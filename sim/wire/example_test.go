package wire_test

import (
	"fmt"

	"github.com/zcnet/zcnet/sim/wire"
)

// A generator sends through a cable into a verifying sink; the cable drops
// what is sent while it is down, and the sink sees the gap.
func Example() {
	sink := wire.NewSink(nil)
	cable := wire.NewCable(nil, sink) // side B receives into the sink
	gen, err := wire.NewGenerator(wire.GeneratorConfig{FrameSize: 64, Flows: 8}, cable.A())
	if err != nil {
		fmt.Println(err)
		return
	}
	gen.Emit(1000)
	cable.SetUp(false)
	gen.Emit(10)
	cable.SetUp(true)
	gen.Emit(1)

	st := sink.Stats()
	fmt.Println("received", st.Received, "bytes", st.ReceivedBytes, "lost", st.Lost, "bad", st.BadIPChecksum+st.BadUDPChecksum)
	fmt.Println("dropped by the cable", cable.AtoB().DroppedDown)
	// Output:
	// received 1001 bytes 60060 lost 10 bad 0
	// dropped by the cable 10
}
