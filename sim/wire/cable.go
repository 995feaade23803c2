package wire

import "sync/atomic"

// Port is anything with a receive side and a transmit side, as a cable sees
// it: an Endpoint for the frames it receives, and Attach to set the Endpoint
// its transmitted frames go to. A simulated NIC port is one; so is a TAP.
type Port interface {
	Endpoint
	Attach(peer Endpoint)
}

// Connect joins two ports back to back with a new Cable, which it returns
// for its counters and its SetUp switch.
func Connect(a, b Port) *Cable {
	c := NewCable(a, b)
	a.Attach(c.A())
	b.Attach(c.B())
	return c
}

// Cable is a back-to-back link between two endpoints, side A and side B.
// Frames delivered into c.A() come out at side B's endpoint and the other
// way round, synchronously, in the caller's goroutine. While the cable is
// down, frames are dropped and counted. The zero value is not usable; use
// NewCable.
type Cable struct {
	up   atomic.Bool
	ends [2]cableEnd
}

// CableStats counts the frames one direction of a cable carried.
type CableStats struct {
	Frames, Bytes uint64
	// DroppedDown counts frames sent while the cable was down;
	// DroppedUnplugged frames sent while the far side had no endpoint.
	DroppedDown, DroppedUnplugged uint64
}

type cableEnd struct {
	cable *Cable
	far   *cableEnd
	rx    atomic.Pointer[endpointBox] // this side's receiver; nil until plugged

	frames, bytes, droppedDown, droppedUnplugged atomic.Uint64
}

// endpointBox lets an interface value sit behind an atomic.Pointer.
type endpointBox struct{ ep Endpoint }

// NewCable makes a cable, up, whose side A delivers to a and side B to b.
// Either may be nil and plugged in later with PlugA or PlugB; frames towards
// an unplugged side are dropped and counted.
func NewCable(a, b Endpoint) *Cable {
	c := &Cable{}
	c.up.Store(true)
	c.ends[0].cable, c.ends[1].cable = c, c
	c.ends[0].far, c.ends[1].far = &c.ends[1], &c.ends[0]
	c.PlugA(a)
	c.PlugB(b)
	return c
}

// A is where side A transmits: what is delivered here reaches side B.
func (c *Cable) A() Endpoint { return &c.ends[0] }

// B is where side B transmits: what is delivered here reaches side A.
func (c *Cable) B() Endpoint { return &c.ends[1] }

// PlugA sets the endpoint receiving at side A (nil unplugs it).
func (c *Cable) PlugA(ep Endpoint) { c.ends[0].plug(ep) }

// PlugB sets the endpoint receiving at side B (nil unplugs it).
func (c *Cable) PlugB(ep Endpoint) { c.ends[1].plug(ep) }

// SetUp raises or cuts the cable. Link state as the NIC reports it is the
// NIC model's business; this only decides whether frames get through.
func (c *Cable) SetUp(up bool) { c.up.Store(up) }

// Up reports whether the cable carries frames.
func (c *Cable) Up() bool { return c.up.Load() }

// AtoB counts the frames sent from side A towards side B.
func (c *Cable) AtoB() CableStats { return c.ends[0].stats() }

// BtoA counts the frames sent from side B towards side A.
func (c *Cable) BtoA() CableStats { return c.ends[1].stats() }

func (e *cableEnd) plug(ep Endpoint) {
	if ep == nil {
		e.rx.Store(nil)
		return
	}
	e.rx.Store(&endpointBox{ep})
}

// Deliver carries a frame transmitted at this end to the far end.
func (e *cableEnd) Deliver(frame []byte) {
	if !e.cable.up.Load() {
		e.droppedDown.Add(1)
		return
	}
	rx := e.far.rx.Load()
	if rx == nil {
		e.droppedUnplugged.Add(1)
		return
	}
	e.frames.Add(1)
	e.bytes.Add(uint64(len(frame)))
	rx.ep.Deliver(frame)
}

func (e *cableEnd) stats() CableStats {
	return CableStats{
		Frames:           e.frames.Load(),
		Bytes:            e.bytes.Load(),
		DroppedDown:      e.droppedDown.Load(),
		DroppedUnplugged: e.droppedUnplugged.Load(),
	}
}

// Tee is an Endpoint that hands each frame to every one of its endpoints in
// turn, e.g. to a sink and to a pcap writer capturing the same traffic.
type Tee []Endpoint

// Deliver implements Endpoint.
func (t Tee) Deliver(frame []byte) {
	for _, ep := range t {
		ep.Deliver(frame)
	}
}

// EndpointFunc adapts a function to the Endpoint interface.
type EndpointFunc func(frame []byte)

// Deliver implements Endpoint.
func (f EndpointFunc) Deliver(frame []byte) { f(frame) }
