// Package wire is everything on the far side of a simulated NIC port's cable:
// a back-to-back cable to another port, a traffic generator, a verifying
// sink, pcap files and a Linux TAP device. They all meet at one small
// interface, Endpoint, through which Ethernet frames are handed over.
package wire

// Endpoint receives frames arriving over a link. Deliver must not retain frame after it returns (copy what you keep). Frames are Ethernet frames without FCS.
type Endpoint interface{ Deliver(frame []byte) }
