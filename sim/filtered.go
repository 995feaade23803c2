package sim

// RxFilteredFrames counts frames of legal size the address filters
// rejected (Counters.RxFiltered): the 82599 has no register for them, so
// telemetry shows them only for a simulated NIC, which it recognizes by
// this method.
func (p *PF) RxFilteredFrames() uint64 { return p.Counters().RxFiltered }
