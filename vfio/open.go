package vfio

import (
	"errors"
	"fmt"
)

// Open takes the PCI function at address (e.g. "0000:01:00.0" or
// "01:00.0") through the whole VFIO sequence: sysfs checks (device present,
// in an IOMMU group, bound to vfio-pci), container (API version, IOMMU
// extension), group (viability, VFIO_GROUP_SET_CONTAINER, VFIO_SET_IOMMU),
// then VFIO_GROUP_GET_DEVICE_FD and the device's region and interrupt
// information. The device's DMA() is its container. Close the device to
// release everything Open acquired. With WithContainer the device joins an
// existing container (and its group, if another device already opened it).
func Open(address string, opts ...Option) (*PCIDevice, error) {
	cfg := newConfig(opts)
	addr, err := ParseAddress(address)
	if err != nil {
		return nil, err
	}
	if err := cfg.checkDeviceExists(addr); err != nil {
		return nil, err
	}
	// The group comes before the driver: without an IOMMU group vfio-pci
	// refuses to bind, and "enable the IOMMU" is then the useful advice.
	groupNum, err := cfg.iommuGroup(addr)
	if err != nil {
		return nil, err
	}
	if err := cfg.checkBound(addr); err != nil {
		return nil, err
	}

	c := cfg.container
	if c == nil {
		if c, err = OpenContainer(opts...); err != nil {
			return nil, err
		}
		c.openedByOpen = true
	} else if c.cfg.noIOMMU != cfg.noIOMMU {
		return nil, fmt.Errorf("open %s: WithNoIOMMU must be given to both Open and the container it joins, or to neither", addr)
	}
	g, err := c.acquireGroup(groupNum, opts)
	if err != nil {
		return nil, errors.Join(fmt.Errorf("open %s: %w", addr, err), c.releaseUser())
	}
	d, err := g.OpenDevice(addr.String())
	if err != nil {
		return nil, errors.Join(err, c.releaseGroup(g), c.releaseUser())
	}
	d.release = func() error { return errors.Join(c.releaseGroup(g), c.releaseUser()) }
	return d, nil
}

// acquireGroup returns the container's group number, opening and adding it
// if needed, and counts one more device user of group and container.
func (c *Container) acquireGroup(number int, opts []Option) (*Group, error) {
	c.acquireMu.Lock()
	defer c.acquireMu.Unlock()
	c.mu.Lock()
	c.users++
	g := c.groups[number]
	if g != nil {
		g.users++
		c.mu.Unlock()
		return g, nil
	}
	c.mu.Unlock()
	g, err := OpenGroup(number, opts...)
	if err != nil {
		return nil, err
	}
	g.openedByOpen = true
	if err := c.AddGroup(g); err != nil {
		g.file.Close()
		return nil, err
	}
	c.mu.Lock()
	g.users++
	c.mu.Unlock()
	return g, nil
}

// releaseGroup drops one device user of g and closes g with its last user
// if Open opened it.
func (c *Container) releaseGroup(g *Group) error {
	if c.dropUser(&g.users, g.openedByOpen) {
		return g.Close()
	}
	return nil
}

// releaseUser drops one device user of c and closes c with its last user if
// Open created it.
func (c *Container) releaseUser() error {
	if c.dropUser(&c.users, c.openedByOpen) {
		return c.Close()
	}
	return nil
}

// dropUser decrements *users under c.mu and reports whether the last user of
// something Open created (owned) is gone.
func (c *Container) dropUser(users *int, owned bool) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	*users--
	return *users == 0 && owned
}
