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
