package vhost_test

import (
	"bytes"
	"testing"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// qemuRARP is the frame QEMU 7.2's announce_self_create builds for
// 52:54:00:12:34:56 (and DPDK's make_rarp_packet), byte for byte.
var qemuRARP = []byte{
	0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0x80, 0x35,
	0x00, 0x01, 0x08, 0x00, 0x06, 0x04, 0x00, 0x03,
	0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0, 0, 0,
	0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0, 0, 0,
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
}

func TestAppendRARP(t *testing.T) {
	got := vhost.AppendRARP(nil, [6]byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56})
	if !bytes.Equal(got, qemuRARP) || len(got) != vhost.RARPFrameLen {
		t.Fatalf("AppendRARP:\n% x\nwant QEMU's\n% x", got, qemuRARP)
	}
}

// TestSendRARP: with Migration the RARP protocol feature is offered and
// SEND_RARP (as QEMU sends it on the destination of a migration: the MAC
// in the first 6 bytes of a u64) is kept for the data path, once; without
// the feature negotiated it is refused and nothing is kept.
func TestSendRARP(t *testing.T) {
	payload := []byte{0x52, 0x54, 0x00, 0x12, 0x34, 0x56, 0, 0}
	take := func(d *vhost.Device) ([6]byte, bool) {
		d.LockDataPath()
		defer d.UnlockDataPath()
		return d.TakeRARP()
	}

	s := vhosttest.Serve(t, vhost.Config{Migration: true})
	g, err := guest.Dial(s.Path, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.Protocol&vhost.ProtoFRARP == 0 {
		t.Fatalf("RARP not negotiated with Migration (protocol %#x)", g.Protocol)
	}
	if _, ok := take(s.Dev); ok {
		t.Fatal("a RARP pending before any SEND_RARP")
	}
	for range 2 { // QEMU announces several times
		if _, err := g.FE.Request(vhost.ReqSendRARP, payload); err != nil {
			t.Fatalf("SEND_RARP: %v", err)
		}
	}
	if mac, ok := take(s.Dev); !ok || mac != [6]byte(payload[:6]) {
		t.Fatalf("TakeRARP = %x, %v; want %x", mac, ok, payload[:6])
	}
	if _, ok := take(s.Dev); ok {
		t.Fatal("TakeRARP returned the same request twice")
	}
	if _, err := g.FE.Request(vhost.ReqSendRARP, []byte{0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 0}); err == nil {
		t.Error("SEND_RARP for the broadcast address accepted")
	}

	s2 := vhosttest.Serve(t, vhost.Config{})
	g2, err := guest.Dial(s2.Path, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer g2.Close()
	if g2.Protocol&(vhost.ProtoFRARP|vhost.ProtoFLogShmfd) != 0 {
		t.Fatalf("without Migration the protocol features %#x include RARP or LOG_SHMFD", g2.Protocol)
	}
	if _, err := g2.FE.Request(vhost.ReqSendRARP, payload); err == nil {
		t.Error("SEND_RARP without the RARP protocol feature accepted")
	}
	if _, ok := take(s2.Dev); ok {
		t.Error("a refused SEND_RARP left a RARP pending")
	}
}
