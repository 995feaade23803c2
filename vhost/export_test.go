package vhost

// TryLockDataPathForTest reports whether the data-path lock was free (and
// takes it then, releasing it at once).
func (d *Device) TryLockDataPathForTest() bool {
	if d.dp.TryLock() {
		d.dp.Unlock()
		return true
	}
	return false
}

// AttachInflightForTest has q track its chains in region (one queue's
// region of an inflight buffer) as a ring started with SET_INFLIGHT_FD
// does, for tests and benchmarks of a queue without a device.
func (q *Virtqueue) AttachInflightForTest(region []byte) error { return q.attachInflight(region) }

// FlushCrashForTest is a packed ring's Flush cut short by a crash of the
// back end: before the used descriptors are published (published false)
// or just after, before the inflight region records that they are. The
// queue then forgets the burst and its region, as a dead process would.
func (q *Virtqueue) FlushCrashForTest(published bool) {
	q.infl.publishing(q)
	if published {
		store32(q.desc, descSize*q.pk.firstSlot+12, q.pk.firstWord)
	}
	q.pk.firstSlot, q.infl = -1, nil
}

// StartLogForTest gives q, a queue without a device, a dirty log of
// memory only (no front end shares it) with a touched record for guest
// pages below pages*4096, as a device does when logging starts (posted
// chains are recorded then); without posted, the log is attached as if
// logging had been on since before anything was posted.
func (q *Virtqueue) StartLogForTest(pages int, posted bool) *DirtyLog {
	n := (pages/8 + 3) &^ 3
	l := &DirtyLog{mapping: make([]byte, n), size: uint64(n), touched: make([]byte, n)}
	if posted {
		q.setLog(l, false, 0, 0)
	} else {
		q.dirty = l
	}
	return l
}
