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
