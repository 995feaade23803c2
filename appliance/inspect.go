package appliance

import (
	"fmt"

	"github.com/zcnet/zcnet/engine"
)

// Session is the state of a guest's vhost-user session and of its
// channels, read-only, for `zcnet port show` and tests: what was
// negotiated, what is mapped, what sits on the NIC.
type Session struct {
	Socket    string `json:"socket"`
	Connected bool   `json:"connected"`
	// Features are the virtio features negotiated with the front end
	// (0 before negotiation); Status is the device status byte as
	// GET_STATUS reports it (vhost.StatusNeedsReset when a virtqueue
	// broke).
	Features uint64 `json:"features"`
	Status   uint8  `json:"status"`
	// MappedRegions is how many guest memory regions are DMA-mapped in
	// the NIC's IOMMU domain: 0 once the session has ended.
	MappedRegions int            `json:"mapped_regions"`
	Channels      []ChannelState `json:"channels"`
}

// ChannelState is one channel of a guest: a NIC queue pair joined to one
// of the guest's virtio queue pairs.
type ChannelState struct {
	Name     string `json:"name"`
	NICQueue int    `json:"nic_queue"`
	// Stats are the channel's counters as the engine keeps them.
	Stats engine.Stats `json:"stats"`
	// Err is why the channel stopped for good (nil while it works).
	Err error `json:"-"`
	// RxPosted is the receive buffers the NIC queue holds (posted, not
	// yet harvested); TxInFlight the transmit descriptors submitted and
	// not yet reclaimed. Both are 0 once the channel has given every
	// buffer back.
	RxPosted   int `json:"rx_posted"`
	TxInFlight int `json:"tx_in_flight"`
}

// Session describes the session of the guest on socket. It takes the
// guest's data-path lock for a moment, as a polling round does.
func (a *Appliance) Session(socket string) (Session, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, g := range a.guests {
		if g.cfg.Socket != socket {
			continue
		}
		info := g.info()
		s := Session{Socket: socket, Connected: info.Connected, MappedRegions: g.dma.Mapped()}
		g.dev.LockDataPath()
		s.Features = g.dev.Features()
		for i, p := range g.channels {
			q := info.Queues[i]
			rxPosted, txInFlight := g.nic.queueUse(q)
			s.Channels = append(s.Channels, ChannelState{Name: p.Name(), NICQueue: q, RxPosted: rxPosted, TxInFlight: txInFlight})
		}
		g.dev.UnlockDataPath()
		s.Status = g.dev.Status() // takes the data-path lock itself
		for i, p := range g.channels {
			s.Channels[i].Stats, s.Channels[i].Err = p.Stats(), p.Err()
		}
		return s, nil
	}
	return Session{}, fmt.Errorf("no guest on socket %s", socket)
}
