package engine

// RestartNIC stops the channel's NIC queues and takes back every buffer
// they held, as when the front end stops its rings (guest chains back to
// the guest's rings, frames the NIC wrote counted as dropped, host
// buffers back to the pool); the next Poll starts the queues again,
// empty, when the guest's rings are ready. It is for a NIC that lost its
// queues under the channel, an SR-IOV VF its PF reset: call it from the
// goroutine polling the channel, between polls, before the NIC is
// brought up again. It never runs on the data path.
func (p *Channel) RestartNIC() error {
	p.dev.LockDataPath()
	defer p.dev.UnlockDataPath()
	if p.failed != nil {
		return p.failed
	}
	var err error
	p.guarded(func(*Channel) int { err = p.quiesce(); return 0 })
	return err
}
