// Package wire is everything on the far side of a simulated NIC port's cable:
// a back-to-back cable to another port, a traffic generator, a verifying
// sink, pcap files and a Linux TAP device. They all meet at one small
// interface, Endpoint, through which Ethernet frames are handed over.
//
//   - Cable, Connect: join two ports (anything with Deliver and Attach, such
//     as the simulated 82599 PF or a TAP) back to back, with counters and an
//     up/down switch.
//   - Generator: Ethernet/IPv4/UDP frames with valid checksums and a probe
//     (sequence number, transmit timestamp), N flows for RSS, paced or
//     unpaced, no allocation per frame.
//   - Sink: verifies both checksums and counts loss, reordering, duplicates
//     and latency.
//   - PcapWriter, PcapReader, Replay: classic pcap out and in.
//   - TAP: frames to and from the kernel's network stack.
//
// Frame sizes follow the Ethernet convention (FCS included: a minimum frame
// is 64 bytes), while frames passed through an Endpoint never carry the FCS
// (a minimum frame is 60 bytes there).
package wire

// Endpoint receives frames arriving over a link. Deliver must not retain frame after it returns (copy what you keep). Frames are Ethernet frames without FCS.
type Endpoint interface{ Deliver(frame []byte) }
