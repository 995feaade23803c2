package ixgbe

// VFStats are the VF's counters since OpenVF.
type VFStats struct {
	// RxPackets, RxBytes and RxMulticast count good frames received
	// (VFGPRC, VFGORC, VFMPRC); TxPackets and TxBytes good frames sent
	// (VFGPTC, VFGOTC).
	RxPackets, RxBytes, RxMulticast uint64
	TxPackets, TxBytes              uint64
	// Resets counts resets by the PF that CheckReset noticed.
	Resets uint64
}

// vfCounter is one VF statistics register: not cleared on read, so the
// driver adds the difference from the last value read, modulo the width
// the counter wraps at (ixgbevf's UPDATE_VF_COUNTER_32bit/36bit).
type vfCounter struct {
	lo, hi uint32 // registers; hi 0: a 32-bit counter
}

var vfCounters = [5]vfCounter{
	{vfGPRC, 0}, {vfGORCLSB, vfGORCMSB}, {vfMPRC, 0}, {vfGPTC, 0}, {vfGOTCLSB, vfGOTCMSB},
}

func (c vfCounter) read(r regs) uint64 {
	v := uint64(r.read(c.lo))
	if c.hi != 0 {
		v |= uint64(r.read(c.hi)&0xF) << 32
	}
	return v
}

func (c vfCounter) mask() uint64 {
	if c.hi != 0 {
		return vfOctMask
	}
	return vfStatMask
}

// counted is what the counter counted from last to now: the difference
// modulo the width it wraps at.
func (c vfCounter) counted(last, now uint64) uint64 { return (now - last) & c.mask() }

// vfStatState is the running totals and the raw values last read.
type vfStatState struct {
	last, total [len(vfCounters)]uint64
}

// snapshot takes the registers' current values as the baseline, without
// counting them: after a bring-up the registers may have restarted from
// zero or kept counting.
func (s *vfStatState) snapshot(r regs) {
	for i, c := range vfCounters {
		s.last[i] = c.read(r)
	}
}

// update adds what each register counted since it was last read.
func (s *vfStatState) update(r regs) {
	for i, c := range vfCounters {
		now := c.read(r)
		s.total[i] += c.counted(s.last[i], now)
		s.last[i] = now
	}
}

// Stats reads the VF's counters. Read them at least once per wrap period
// of the 32-bit packet counters (about 7 minutes at 10 Gb/s line rate of
// minimal frames).
func (v *VF) Stats() VFStats {
	v.mu.Lock()
	defer v.mu.Unlock()
	if !v.resetting && !v.closed {
		v.stats.update(v.regs)
	}
	t := &v.stats.total
	return VFStats{
		RxPackets: t[0], RxBytes: t[1], RxMulticast: t[2],
		TxPackets: t[3], TxBytes: t[4],
		Resets: v.resets,
	}
}
