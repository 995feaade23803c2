package vhost_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"

	"github.com/zcnet/zcnet/sim/guest"
	"github.com/zcnet/zcnet/vhost"
	"github.com/zcnet/zcnet/vhost/vhosttest"
)

// FuzzDeviceSession fuzzes the whole back-end state machine: the input is
// decoded into a sequence of vhost-user messages (and a few data-path
// steps) that a front end sends over a real unix socket, with descriptors
// of every kind attached, to a Device served by ServeListener. Whatever the
// sequence, the back end must not panic; once the front end has gone, the
// device must be free again, every descriptor it received closed and none
// of the front end's memory left mapped or DMA-mapped; and a well-behaved
// front end connecting next must be set up and served (a frame looped back).
//
// Input format, one step after another (decodeSession):
//
//	op      request index into sessionRequests; len: a raw request number
//	        (first 4 argument bytes), len+1: poll the loopback, len+2:
//	        pwrite the arguments into the small sealed memfd
//	mode    bits 0-1 payload shape (sensible, raw arguments, cut short,
//	        extended), bit 2 NEED_REPLY, bits 3-4 descriptors (the ones the
//	        request expects, listed only, both, none), bit 5 bad header
//	        flags, bit 6 header and payload in two sends, bit 7 send only
//	        part of the message and hang up
//	n       number of argument bytes, then the arguments
//	[k]     for shapes cut/extended: by how many bytes
//	[c ...] with listed descriptors: their count, then one kind byte each
const sessionFuzzName = "FuzzDeviceSession"

var sessionRequests = []vhost.Request{
	vhost.ReqGetFeatures, vhost.ReqSetFeatures, vhost.ReqSetOwner, vhost.ReqResetOwner,
	vhost.ReqSetMemTable, vhost.ReqSetLogBase, vhost.ReqSetLogFD, vhost.ReqSetVringNum,
	vhost.ReqSetVringAddr, vhost.ReqSetVringBase, vhost.ReqGetVringBase, vhost.ReqSetVringKick,
	vhost.ReqSetVringCall, vhost.ReqSetVringErr, vhost.ReqGetProtocolFeatures,
	vhost.ReqSetProtocolFeatures, vhost.ReqGetQueueNum, vhost.ReqSetVringEnable,
	vhost.ReqSendRARP, vhost.ReqNetSetMTU, vhost.ReqSetBackendReqFD, vhost.ReqIOTLBMsg,
	vhost.ReqSetVringEndian, vhost.ReqGetConfig, vhost.ReqSetConfig, vhost.ReqGetInflightFD,
	vhost.ReqSetInflightFD, vhost.ReqResetDevice, vhost.ReqVringKick, vhost.ReqGetMaxMemSlots,
	vhost.ReqAddMemReg, vhost.ReqRemMemReg, vhost.ReqSetStatus, vhost.ReqGetStatus,
}

// Steps that are not one of sessionRequests (negative: no request number
// decodes to them); their op bytes follow the requests' (opCode).
const (
	opRawRequest = iota - 3 // a request number from the arguments
	opPoll
	opPwrite
)

// opCode returns the op byte for a request or a special op.
func opCode(op int) byte {
	if op < 0 {
		return byte(len(sessionRequests) + op - opRawRequest)
	}
	for i, r := range sessionRequests {
		if int(r) == op {
			return byte(i)
		}
	}
	panic(fmt.Sprintf("request %d not in sessionRequests", op))
}

// Mode bits.
const (
	shapeSensible = 0
	shapeRaw      = 1
	shapeCut      = 2
	shapeExtend   = 3
	modeNeedReply = 1 << 2
	fdsListed     = 1 << 3 // only the listed descriptors
	fdsAutoListed = 2 << 3 // the expected ones, then the listed ones
	fdsNone       = 3 << 3
	modeBadFlags  = 1 << 5
	modeSplitSend = 1 << 6
	modeHangUp    = 1 << 7
)

// Descriptor kinds a front end may attach.
const (
	fdEventfd     = iota
	fdSealedSmall // memfd of sessionSmall bytes sealed against shrinking and growing
	fdSealedBig   // the same, sessionBig bytes
	fdUnsealed    // memfd created without MFD_ALLOW_SEALING
	fdSealable    // memfd that could be sealed but is not
	fdWriteSealed // sealed against writes too: a shared writable mapping fails
	fdPipeRead
	fdPipeWrite
	fdDevNull
	fdSocket // one end of a unix socket pair
	numFDKinds
)

var fdKindNames = [numFDKinds]string{"eventfd", "sealed-small", "sealed-big", "unsealed",
	"sealable", "write-sealed", "pipe-r", "pipe-w", "/dev/null", "socket"}

// Guest memory as the sensible payloads describe it.
const (
	sessionSmall = 64 << 10
	sessionBig   = 2 << 20
	gpaSmall     = 0x10_0000
	gpaBig       = 0x100_0000
	uvaSmall     = 0x7f12_0000_0000
	uvaBig       = 0x7f12_4000_0000
	// 2 queue pairs and the control queue.
	sessionVrings = 5
	sessionPairs  = 2
)

const sessionFeatures = vhost.DefaultFeatures | vhost.FRingPacked | vhost.FInOrder
const sessionProtocol = vhost.DefaultProtocolFeatures | vhost.ProtoFConfig

// argReader hands out argument bytes, zeros once they run out.
type argReader struct{ b []byte }

func (r *argReader) u8() byte {
	if len(r.b) == 0 {
		return 0
	}
	v := r.b[0]
	r.b = r.b[1:]
	return v
}

func (r *argReader) u16() uint16 { return uint16(r.u8()) | uint16(r.u8())<<8 }
func (r *argReader) u32() uint32 { return uint32(r.u16()) | uint32(r.u16())<<16 }
func (r *argReader) u64() uint64 { return uint64(r.u32()) | uint64(r.u32())<<32 }

// sessionStep is one decoded step.
type sessionStep struct {
	op      int // a Request, opPoll or opPwrite
	mode    byte
	payload []byte
	fds     []int // descriptor kinds
	args    []byte
}

func (s sessionStep) String() string {
	var name string
	switch s.op {
	case opPoll:
		return fmt.Sprintf("poll x%d", len(s.args)%4+1)
	case opPwrite:
		return fmt.Sprintf("pwrite %d bytes", len(s.args))
	default:
		name = vhost.Request(s.op).String()
	}
	kinds := make([]string, len(s.fds))
	for i, k := range s.fds {
		kinds[i] = fdKindNames[k]
	}
	return fmt.Sprintf("%s mode %#02x payload %d bytes % x fds %v", name, s.mode, len(s.payload), s.payload, kinds)
}

// decodeSession turns fuzz input into steps (at most 48).
func decodeSession(data []byte) []sessionStep {
	var steps []sessionStep
	in := &argReader{b: data}
	for len(in.b) > 0 && len(steps) < 48 {
		op := int(in.u8()) % (len(sessionRequests) + 3)
		mode := in.u8()
		n := int(in.u8()) % 64
		n = min(n, len(in.b))
		args := in.b[:n]
		in.b = in.b[n:]
		st := sessionStep{mode: mode, args: args}
		switch {
		case op < len(sessionRequests):
			st.op = int(sessionRequests[op])
		case op == len(sessionRequests):
			r := &argReader{b: args}
			st.op = int(r.u32())
			st.payload = append([]byte(nil), r.b...)
		case op == len(sessionRequests)+1:
			st.op = opPoll
		default:
			st.op = opPwrite
		}
		if st.op == opPoll || st.op == opPwrite {
			steps = append(steps, st)
			continue
		}
		var auto []int
		if op < len(sessionRequests) {
			r := &argReader{b: args}
			switch mode & 3 {
			case shapeSensible:
				st.payload, auto = sensiblePayload(vhost.Request(st.op), r)
			case shapeRaw:
				st.payload = append([]byte(nil), args...)
				_, auto = sensiblePayload(vhost.Request(st.op), &argReader{b: args})
			case shapeCut:
				st.payload, auto = sensiblePayload(vhost.Request(st.op), r)
				k := int(in.u8())%8 + 1
				st.payload = st.payload[:max(0, len(st.payload)-k)]
			case shapeExtend:
				st.payload, auto = sensiblePayload(vhost.Request(st.op), r)
				k := int(in.u8())%16 + 1
				st.payload = append(st.payload, make([]byte, k)...)
			}
		}
		var listed []int
		if mode&(3<<3) == fdsListed || mode&(3<<3) == fdsAutoListed {
			c := int(in.u8()) % 12 // 9 and more: more than the back end takes
			for range c {
				listed = append(listed, int(in.u8())%numFDKinds)
			}
		}
		switch mode & (3 << 3) {
		case 0:
			st.fds = auto
		case fdsListed:
			st.fds = listed
		case fdsAutoListed:
			st.fds = append(auto, listed...)
		}
		steps = append(steps, st)
		if mode&modeHangUp != 0 {
			break
		}
	}
	return steps
}

// sessionRegion returns a region descriptor over one of the memfds, shaped by s:
// bit 0 picks the memfd, bits 1-3 how it is wrong, if at all.
func sessionRegion(s byte, r *argReader) (vhost.RegionDesc, int) {
	d, kind := vhost.RegionDesc{GuestPhysAddr: gpaSmall, Size: sessionSmall, UserAddr: uvaSmall}, fdSealedSmall
	if s&1 != 0 {
		d, kind = vhost.RegionDesc{GuestPhysAddr: gpaBig, Size: sessionBig, UserAddr: uvaBig}, fdSealedBig
	}
	switch (s >> 1) & 7 {
	case 1:
		d.Size /= 2
	case 2:
		d.Size = 0
	case 3:
		d.Size = 1 << 40 // past the file and the memory limit
	case 4:
		d.MmapOffset, d.Size, d.GuestPhysAddr, d.UserAddr = 4096, d.Size-4096, d.GuestPhysAddr+4096, d.UserAddr+4096
	case 5:
		d.MmapOffset = d.Size // past the end of the file
	case 6:
		d.GuestPhysAddr = gpaSmall // overlaps the small region
	case 7:
		d.GuestPhysAddr, d.Size, d.UserAddr, d.MmapOffset = r.u64(), r.u64(), r.u64(), r.u64()
	}
	return d, kind
}

func vringIndex(b byte) uint32 {
	if b >= 0xf0 {
		return uint32(b) // far out of range
	}
	return uint32(b) % (sessionVrings + 1) // the last one just out of range
}

// ringAddrs lays vring i out in the small region (or the big one).
func ringAddrs(i uint32, big bool) (desc, avail, used uint64) {
	base := uint64(uvaSmall) + uint64(i%4)*0x4000
	if big {
		base = uvaBig + uint64(i%16)*0x10000
	}
	return base, base + 0x1000, base + 0x2000
}

// sensiblePayload builds a well-formed payload for req from the arguments,
// and the descriptor kinds a front end would attach to it.
func sensiblePayload(req vhost.Request, r *argReader) ([]byte, []int) {
	switch req {
	case vhost.ReqGetFeatures, vhost.ReqGetProtocolFeatures, vhost.ReqGetQueueNum,
		vhost.ReqGetStatus, vhost.ReqGetMaxMemSlots, vhost.ReqSetOwner,
		vhost.ReqResetOwner, vhost.ReqResetDevice:
		if r.u8()&1 != 0 {
			return make([]byte, 8), nil // QEMU sends a zero u64 with some
		}
		return nil, nil
	case vhost.ReqSetFeatures, vhost.ReqSetProtocolFeatures:
		offered := uint64(sessionFeatures | vhost.FProtocolFeatures)
		wanted := uint64(guest.DefaultWanted)
		if req == vhost.ReqSetProtocolFeatures {
			offered, wanted = sessionProtocol, vhost.ProtoFReplyAck|vhost.ProtoFMQ|vhost.ProtoFStatus|vhost.ProtoFInflightShmfd
		}
		var v uint64
		switch r.u8() % 4 {
		case 0:
			v = offered
		case 1:
			v = offered & wanted
		case 2:
			v = offered & r.u64()
		case 3:
			v = r.u64()
		}
		return vhost.EncodeU64(v), nil
	case vhost.ReqSetMemTable:
		n := int(r.u8())
		var regs []vhost.RegionDesc
		var kinds []int
		count := n%2 + 1
		if n >= 0xf0 {
			count = n % 10 // 0 and 9 are refused outright
		}
		for range count {
			d, k := sessionRegion(r.u8(), r)
			regs = append(regs, d)
			kinds = append(kinds, k)
		}
		if count > 8 {
			b := vhost.EncodeMemTable(regs[:8])
			binary.NativeEndian.PutUint32(b, uint32(count))
			return b, kinds
		}
		b := vhost.EncodeMemTable(regs)
		if n&0x80 != 0 && count > 0 {
			b = b[:8+32*count] // the exact size, as some front ends send it
		}
		return b, kinds
	case vhost.ReqAddMemReg, vhost.ReqRemMemReg:
		d, k := sessionRegion(r.u8(), r)
		if req == vhost.ReqRemMemReg && r.u8()&1 == 0 {
			return vhost.EncodeMemReg(d), nil
		}
		return vhost.EncodeMemReg(d), []int{k}
	case vhost.ReqSetVringNum:
		i, v := vringIndex(r.u8()), r.u8()
		num := uint32(1) << (v % 12) // 1 to 2048
		if v >= 0xf0 {
			num = r.u32()
		}
		return vhost.EncodeVringState(vhost.VringState{Index: i, Num: num}), nil
	case vhost.ReqSetVringBase, vhost.ReqSetVringEndian, vhost.ReqVringKick:
		i := vringIndex(r.u8())
		return vhost.EncodeVringState(vhost.VringState{Index: i, Num: r.u32()}), nil
	case vhost.ReqGetVringBase:
		return vhost.EncodeVringState(vhost.VringState{Index: vringIndex(r.u8())}), nil
	case vhost.ReqSetVringEnable:
		i := vringIndex(r.u8())
		return vhost.EncodeVringState(vhost.VringState{Index: i, Num: uint32(r.u8() % 3)}), nil
	case vhost.ReqSetVringAddr:
		i, v := vringIndex(r.u8()), r.u8()
		desc, avail, used := ringAddrs(i, v&1 != 0)
		a := vhost.VringAddr{Index: i, Desc: desc, Avail: avail, Used: used, Flags: uint32(v>>1) & 1}
		switch (v >> 2) & 3 {
		case 1:
			a.Used = avail + 1 // misaligned
		case 2:
			a.Desc = r.u64()
		case 3:
			a.Avail = uvaSmall + sessionSmall - 2 // straddles the end
		}
		return vhost.EncodeVringAddr(a), nil
	case vhost.ReqSetVringKick, vhost.ReqSetVringCall, vhost.ReqSetVringErr:
		i, v := vringIndex(r.u8()), r.u8()
		p := vhost.EncodeVringFile(int(i), v&1 != 0)
		if v&2 != 0 {
			p[1] |= 2 // a reserved bit
		}
		if v&1 != 0 {
			return p, nil
		}
		return p, []int{fdEventfd}
	case vhost.ReqSetLogBase:
		return append(vhost.EncodeU64(r.u64()%sessionSmall), vhost.EncodeU64(0)...), []int{fdSealedSmall}
	case vhost.ReqSetLogFD:
		return vhost.EncodeU64(0), []int{fdEventfd}
	case vhost.ReqSetBackendReqFD:
		return vhost.EncodeU64(0), []int{fdSocket}
	case vhost.ReqGetInflightFD, vhost.ReqSetInflightFD:
		// Without arguments: every vring, 256 descriptors, the whole small
		// memfd (which holds the 5*4160 bytes that needs). Arguments
		// change the queue count (too many with 6 and 7, none with 5),
		// the queue size (up to 1024, or not a power of two), the offset
		// and the size (too small past 0x2c).
		d := vhost.InflightDesc{MmapSize: sessionSmall, NumQueues: sessionVrings ^ uint16(r.u8()&7), QueueSize: 256}
		switch v := r.u8(); {
		case v&0x80 != 0:
			d.QueueSize = uint16(v) // 128 and up, a power of two only for 128
		default:
			d.QueueSize <<= v % 3
		}
		d.MmapOffset = 64 * uint64(r.u8())
		d.MmapSize -= 1024 * uint64(r.u8())
		if req == vhost.ReqSetInflightFD {
			return vhost.EncodeInflight(d), []int{fdSealedSmall}
		}
		return vhost.EncodeInflight(d), nil
	case vhost.ReqGetConfig, vhost.ReqSetConfig:
		off, n := uint32(r.u8()%14), int(r.u8()%14)
		data := make([]byte, n)
		for i := range data {
			data[i] = r.u8()
		}
		return vhost.EncodeConfig(off, 0, data), nil
	case vhost.ReqSetStatus:
		v := uint64(r.u8())
		if v == 0xff {
			v = r.u64()
		}
		return vhost.EncodeU64(v), nil
	case vhost.ReqSendRARP:
		return []byte{2, 0, 0, 0, 0, r.u8(), 0, 0}, nil
	case vhost.ReqNetSetMTU:
		return vhost.EncodeU64(uint64(r.u16())), nil
	case vhost.ReqIOTLBMsg:
		p := make([]byte, 40)
		binary.NativeEndian.PutUint64(p, r.u64())
		p[32] = r.u8()
		return p, nil
	}
	return nil, nil
}

// encodeSession is decodeSession's inverse for writing seeds: each step is
// (op, mode, args, extra) where extra follows the arguments (the cut or
// extension length and the listed descriptors).
type seedStep struct {
	op    int
	mode  byte
	args  []byte
	extra []byte
}

func encodeSession(steps []seedStep) []byte {
	var b []byte
	for _, s := range steps {
		if len(s.args) >= 64 {
			panic("seed step with 64 or more argument bytes")
		}
		b = append(b, opCode(s.op), s.mode, byte(len(s.args)))
		b = append(b, s.args...)
		b = append(b, s.extra...)
	}
	return b
}

// sessionPool is one of each descriptor kind, created per input.
type sessionPool struct {
	fds     [numFDKinds]int
	others  []int           // the other ends of the pipe and the socket pair
	targets map[string]bool // /proc/self/fd link targets of all of them
}

func newSessionPool(t *testing.T) *sessionPool {
	p := &sessionPool{targets: map[string]bool{}}
	for i := range p.fds {
		p.fds[i] = -1
	}
	t.Cleanup(func() { closeAllFDs(append(p.fds[:], p.others...)) })
	must := func(fd int, err error) int {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return fd
	}
	p.fds[fdEventfd] = must(unix.Eventfd(0, unix.EFD_CLOEXEC|unix.EFD_NONBLOCK))
	const shrinkGrow = unix.F_SEAL_SHRINK | unix.F_SEAL_GROW
	p.fds[fdSealedSmall] = memfd(t, "zcnet-statefuzz-sealed-small", sessionSmall, shrinkGrow)
	p.fds[fdSealedBig] = memfd(t, "zcnet-statefuzz-sealed-big", sessionBig, shrinkGrow)
	p.fds[fdUnsealed] = memfd(t, "zcnet-statefuzz-unsealed", sessionSmall, 0)
	p.fds[fdWriteSealed] = memfd(t, "zcnet-statefuzz-write-sealed", sessionSmall, shrinkGrow|unix.F_SEAL_WRITE)
	p.fds[fdSealable] = must(unix.MemfdCreate("zcnet-statefuzz-sealable", unix.MFD_CLOEXEC|unix.MFD_ALLOW_SEALING))
	if err := unix.Ftruncate(p.fds[fdSealable], sessionSmall); err != nil {
		t.Fatal(err)
	}
	var pp [2]int
	if err := unix.Pipe2(pp[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	p.fds[fdPipeRead], p.fds[fdPipeWrite] = pp[0], pp[1]
	p.fds[fdDevNull] = must(unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0))
	sp, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	p.fds[fdSocket] = sp[0]
	p.others = []int{sp[1]}
	for _, fd := range append(p.fds[:], p.others...) {
		l, err := os.Readlink(fmt.Sprintf("/proc/self/fd/%d", fd))
		if err != nil {
			t.Fatal(err)
		}
		p.targets[l] = true
	}
	return p
}

func closeAllFDs(fds []int) {
	for _, fd := range fds {
		if fd >= 0 {
			unix.Close(fd)
		}
	}
}

// open lists this process's descriptors that refer to the pool's files
// (eventfds and /dev/null included, whoever opened them).
func (p *sessionPool) open() []string {
	ents, _ := os.ReadDir("/proc/self/fd")
	var out []string
	for _, e := range ents {
		if l, err := os.Readlink("/proc/self/fd/" + e.Name()); err == nil && p.targets[l] {
			out = append(out, l)
		}
	}
	sort.Strings(out)
	return out
}

// mappedMemfds lists the mappings of memfds whose name starts with prefix.
func mappedMemfds(t *testing.T, prefix string) string {
	b, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, l := range strings.Split(string(b), "\n") {
		if strings.Contains(l, "/memfd:"+prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// sessionServer is the device under test, one per fuzz worker.
type sessionServer struct {
	dev  *vhost.Device
	path string
	loop *vhosttest.Loopback
	hook *recordingHook
	logs *observer.ObservedLogs
}

func newSessionServer(f *testing.F) *sessionServer {
	core, logs := observer.New(zap.DebugLevel)
	hook := &recordingHook{mapped: map[*byte]int{}}
	srv := vhosttest.Serve(f, vhost.Config{
		Name: "statefuzz", Features: sessionFeatures, ProtocolFeatures: sessionProtocol,
		QueuePairs: sessionPairs, MAC: net.HardwareAddr{2, 0, 0, 0, 0, 9}, MTU: 1500,
		Hook: hook, Logger: zap.New(core),
	})
	return &sessionServer{dev: srv.Dev, path: srv.Path, loop: vhosttest.NewLoopback(srv.Dev), hook: hook, logs: logs}
}

// waitFor polls cond for up to 5 s.
func waitFor(cond func() bool) bool {
	for range 2500 {
		if cond() {
			return true
		}
		time.Sleep(2 * time.Millisecond)
	}
	return cond()
}

func FuzzDeviceSession(f *testing.F) {
	// The seeds are in testdata (sessionSeeds, TestDeviceSessionCorpus).
	s := newSessionServer(f)
	f.Fuzz(func(t *testing.T, data []byte) {
		s.logs.TakeAll()
		steps := decodeSession(data)
		defer func() {
			if t.Failed() || os.Getenv("SFDEBUG") != "" {
				for i, st := range steps {
					t.Logf("step %d: %v", i, st)
				}
				for _, e := range s.logs.TakeAll() {
					t.Logf("back end: %s %v", e.Message, e.ContextMap())
				}
			}
		}()
		pool := newSessionPool(t)
		before := pool.open()
		s.play(t, pool, steps)
		if !waitFor(func() bool { return !s.dev.Connected() }) {
			t.Fatal("the device still has a front end 5 s after it hung up")
		}
		s.released(t, pool, before, "the fuzzed session", "zcnet-statefuzz-")
		s.wellBehaved(t)
		s.released(t, pool, before, "the well-behaved session", "zcnet-guest")
	})
}

// play sends the steps over a fresh connection and hangs up.
func (s *sessionServer) play(t *testing.T, pool *sessionPool, steps []sessionStep) {
	uc, err := net.DialUnix("unix", nil, &net.UnixAddr{Name: s.path, Net: "unix"})
	if err != nil {
		t.Fatal(err)
	}
	defer uc.Close()
	// Wait until the back end has taken the connection, so that what
	// follows it is checked after this session, not before it.
	if !waitFor(s.dev.Connected) {
		t.Fatal("the back end did not take the connection")
	}
	// Replies are read and dropped (with any descriptor they might carry).
	drained := make(chan struct{})
	go func() {
		defer close(drained)
		buf, oob := make([]byte, 8192), make([]byte, unix.CmsgSpace(64*4))
		for {
			_, oobn, _, _, err := uc.ReadMsgUnix(buf, oob)
			if oobn > 0 {
				if cms, err := unix.ParseSocketControlMessage(oob[:oobn]); err == nil {
					for _, cm := range cms {
						fds, _ := unix.ParseUnixRights(&cm)
						closeAllFDs(fds)
					}
				}
			}
			if err != nil {
				return
			}
		}
	}()
	defer func() { uc.Close(); <-drained }()
	_ = uc.SetWriteDeadline(time.Now().Add(5 * time.Second))
	for _, st := range steps {
		switch st.op {
		case opPoll:
			for range len(st.args)%4 + 1 {
				s.loop.Poll()
			}
			continue
		case opPwrite:
			r := &argReader{b: st.args}
			off := int64(r.u16()) % sessionSmall
			_, _ = unix.Pwrite(pool.fds[fdSealedSmall], r.b, off)
			continue
		}
		flags := uint32(vhost.FlagVersion)
		if st.mode&modeNeedReply != 0 {
			flags |= vhost.FlagNeedReply
		}
		if st.mode&modeBadFlags != 0 {
			flags = 2 | 0x100
		}
		msg := make([]byte, vhost.HeaderSize+len(st.payload))
		vhost.EncodeHeader(msg, vhost.Header{Request: vhost.Request(st.op), Flags: flags, Size: uint32(len(st.payload))})
		copy(msg[vhost.HeaderSize:], st.payload)
		fds := make([]int, len(st.fds))
		for i, k := range st.fds {
			fds[i] = pool.fds[k]
		}
		var oob []byte
		if len(fds) > 0 {
			oob = unix.UnixRights(fds...)
		}
		if st.mode&modeHangUp != 0 {
			// Part of the message, then nothing: the back end must see a
			// partial message when the connection closes.
			_, _, _ = uc.WriteMsgUnix(msg[:max(1, len(msg)/2)], oob, nil)
			return
		}
		if st.mode&modeSplitSend != 0 && len(st.payload) > 0 {
			if _, _, err := uc.WriteMsgUnix(msg[:vhost.HeaderSize], nil, nil); err != nil {
				return
			}
			msg = msg[vhost.HeaderSize:]
		}
		if _, _, err := uc.WriteMsgUnix(msg, oob, nil); err != nil {
			return // the back end dropped the connection
		}
	}
}

// released checks that, the session over, the back end holds none of the
// descriptors and none of the memory it was given.
func (s *sessionServer) released(t *testing.T, pool *sessionPool, before []string, what, memfdPrefix string) {
	t.Helper()
	var now []string
	// Notifiers close their eventfds on their own goroutines.
	if !waitFor(func() bool { now = pool.open(); return equalStrings(now, before) }) {
		t.Fatalf("after %s the back end still holds descriptors it was given:\nbefore %q\nafter  %q", what, before, now)
	}
	if m := mappedMemfds(t, memfdPrefix); m != "" {
		t.Fatalf("after %s guest memory is still mapped:\n%s", what, m)
	}
	if mapped, maps, unmaps := s.hook.counts(); mapped != 0 {
		t.Fatalf("after %s %d regions are still DMA-mapped (%d maps, %d unmaps)", what, mapped, maps, unmaps)
	}
}

func equalStrings(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// wellBehaved connects a front end set up as QEMU does and loops a frame
// back through the device.
func (s *sessionServer) wellBehaved(t *testing.T) {
	t.Helper()
	g, err := guest.Dial(s.path, guest.Options{})
	if err != nil {
		t.Fatalf("a well-behaved front end after the session: %v", err)
	}
	defer func() {
		g.Close()
		if !waitFor(func() bool { return !s.dev.Connected() }) {
			t.Fatal("the device still has the well-behaved front end 5 s after it left")
		}
	}()
	if st := s.dev.Status(); st&vhost.StatusDriverOK == 0 {
		t.Fatalf("status %#x after a well-behaved setup", st)
	}
	if err := g.PostRx(0, 4); err != nil {
		t.Fatal(err)
	}
	frame := make([]byte, 60)
	copy(frame, []byte{0x02, 0, 0, 0, 0, 1, 0x02, 0, 0, 0, 0, 2, 0x88, 0xb5, 0x5a})
	if err := g.Transmit(0, vhost.NetHeader{}, frame); err != nil {
		t.Fatal(err)
	}
	var got []guest.Packet
	for range 10 {
		s.loop.Poll()
		p, err := g.Receive(0)
		if err != nil {
			t.Fatal(err)
		}
		if got = append(got, p...); len(got) > 0 {
			break
		}
	}
	want := append([]byte(nil), frame...)
	copy(want[0:6], frame[6:12])
	copy(want[6:12], frame[0:6])
	if len(got) != 1 || !bytes.Equal(got[0].Frame, want) {
		t.Fatalf("the well-behaved front end got %d frames back (%v), want its frame with the MACs swapped; loopback %+v",
			len(got), got, s.loop.Counters())
	}
}

// Seeds.

var updateSessionCorpus = flag.Bool("statefuzz.update", false, "rewrite the seed corpus of "+sessionFuzzName)

type sessionSeed struct {
	name  string
	steps []seedStep
}

// qemuSetup is QEMU's sequence for one queue pair and the control queue
// (sim/guest's setup), with the arguments sensiblePayload reads.
func qemuSetup(memSlots ...byte) []seedStep {
	st := []seedStep{
		{op: int(vhost.ReqGetFeatures)},
		{op: int(vhost.ReqGetProtocolFeatures)},
		{op: int(vhost.ReqSetProtocolFeatures), args: []byte{1}},
		{op: int(vhost.ReqGetQueueNum)},
		{op: int(vhost.ReqSetOwner), mode: modeNeedReply},
		{op: int(vhost.ReqGetFeatures)},
	}
	for i := byte(0); i < 3; i++ {
		st = append(st,
			seedStep{op: int(vhost.ReqSetVringCall), mode: modeNeedReply, args: []byte{i, 0}},
			seedStep{op: int(vhost.ReqSetVringErr), mode: modeNeedReply, args: []byte{i, 0}})
	}
	for i := byte(0); i < 3; i++ {
		st = append(st, seedStep{op: int(vhost.ReqSetVringEnable), mode: modeNeedReply, args: []byte{i, 0}})
	}
	st = append(st,
		seedStep{op: int(vhost.ReqSetFeatures), mode: modeNeedReply, args: []byte{1}},
		seedStep{op: int(vhost.ReqGetStatus)},
		seedStep{op: int(vhost.ReqSetStatus), mode: modeNeedReply, args: []byte{0x0b}})
	if len(memSlots) == 0 {
		memSlots = []byte{0}
	}
	st = append(st, seedStep{op: int(vhost.ReqSetMemTable), mode: modeNeedReply, args: append([]byte{byte(len(memSlots) - 1)}, memSlots...)})
	for i := byte(0); i < 3; i++ {
		st = append(st,
			seedStep{op: int(vhost.ReqSetVringNum), mode: modeNeedReply, args: []byte{i, 8}}, // 256
			seedStep{op: int(vhost.ReqSetVringBase), mode: modeNeedReply, args: []byte{i}},
			seedStep{op: int(vhost.ReqSetVringAddr), mode: modeNeedReply, args: []byte{i, 0}},
			seedStep{op: int(vhost.ReqSetVringKick), mode: modeNeedReply, args: []byte{i, 0}},
			seedStep{op: int(vhost.ReqSetVringCall), mode: modeNeedReply, args: []byte{i, 0}})
	}
	for i := byte(0); i < 3; i++ {
		st = append(st, seedStep{op: int(vhost.ReqSetVringEnable), mode: modeNeedReply, args: []byte{i, 1}})
	}
	return append(st,
		seedStep{op: int(vhost.ReqGetStatus)},
		seedStep{op: int(vhost.ReqSetStatus), mode: modeNeedReply, args: []byte{0x0f}})
}

func join(parts ...[]seedStep) []seedStep {
	var out []seedStep
	for _, p := range parts {
		out = append(out, p...)
	}
	return out
}

// listed attaches descriptors of the given kinds instead of the expected ones.
func listed(kinds ...int) []byte {
	b := []byte{byte(len(kinds))}
	for _, k := range kinds {
		b = append(b, byte(k))
	}
	return b
}

func sessionSeeds() []sessionSeed {
	mem := int(vhost.ReqSetMemTable)
	poll := seedStep{op: opPoll}
	// An avail ring entry for TX (vring 1): desc 0 -> 64 bytes at gpa
	// gpaSmall+0x8000, then avail idx 1.
	txDesc := seedStep{op: opPwrite, args: func() []byte {
		b := []byte{0x00, 0x40} // offset 0x4000: vring 1's descriptor table
		d := make([]byte, 16)
		binary.LittleEndian.PutUint64(d, gpaSmall+0xc000) // no ring there
		binary.LittleEndian.PutUint32(d[8:], 64)
		return append(b, d...)
	}()}
	txAvail := seedStep{op: opPwrite, args: []byte{0x00, 0x50, 0, 0, 1, 0, 0, 0}} // 0x5000: flags, idx 1, ring[0]=0
	return []sessionSeed{
		{"qemu-setup", qemuSetup()},
		{"qemu-setup-two-regions", qemuSetup(0, 1)},
		{"qemu-setup-then-poll-traffic", join(qemuSetup(), []seedStep{txDesc, txAvail, poll, poll})},
		{"setup-without-reply-ack", join(qemuSetup()[:2], qemuSetup()[3:])},
		{"repeated-mem-table", join(qemuSetup(), []seedStep{
			{op: mem, mode: modeNeedReply, args: []byte{1, 1, 0}},
			{op: mem, mode: modeNeedReply, args: []byte{0, 0}},
			poll,
			{op: mem, mode: modeNeedReply, args: []byte{0, 1}},
		})},
		{"get-vring-base-mid-way", join(qemuSetup(), []seedStep{
			{op: int(vhost.ReqGetVringBase), args: []byte{1}},
			poll,
			{op: int(vhost.ReqSetVringBase), mode: modeNeedReply, args: []byte{1, 5}},
			{op: int(vhost.ReqSetVringKick), mode: modeNeedReply, args: []byte{1, 0}},
			{op: int(vhost.ReqGetVringBase), args: []byte{0}},
			{op: int(vhost.ReqSetVringAddr), mode: modeNeedReply, args: []byte{0, 1}},
		})},
		{"wrong-fds", join(qemuSetup()[:3], []seedStep{
			{op: mem, mode: modeNeedReply | fdsListed, args: []byte{0, 0}, extra: listed(fdUnsealed)},
			{op: mem, mode: modeNeedReply | fdsListed, args: []byte{0, 0}, extra: listed(fdSealable)},
			{op: mem, mode: modeNeedReply | fdsListed, args: []byte{0, 0}, extra: listed(fdWriteSealed)},
			{op: mem, mode: modeNeedReply | fdsListed, args: []byte{0, 0}, extra: listed(fdDevNull)},
			{op: mem, mode: modeNeedReply | fdsListed, args: []byte{0, 0}, extra: listed(fdPipeRead)},
			{op: int(vhost.ReqSetVringKick), mode: modeNeedReply | fdsListed, args: []byte{0, 0}, extra: listed(fdPipeWrite)},
			{op: int(vhost.ReqSetVringCall), mode: modeNeedReply | fdsListed, args: []byte{0, 0}, extra: listed(fdSocket)},
			{op: int(vhost.ReqSetVringErr), mode: modeNeedReply | fdsListed, args: []byte{0, 0}, extra: listed(fdSealedSmall)},
			{op: int(vhost.ReqSetOwner), mode: modeNeedReply | fdsListed, extra: listed(fdEventfd, fdSocket)},
			{op: int(vhost.ReqSetBackendReqFD), mode: modeNeedReply},
			{op: int(vhost.ReqSetLogBase), mode: modeNeedReply},
			{op: int(vhost.ReqSetInflightFD), mode: modeNeedReply},
		}, qemuSetup()[3:])},
		{"too-many-fds", join(qemuSetup()[:3], []seedStep{
			{op: mem, mode: modeNeedReply | fdsListed, args: []byte{0, 0},
				extra: listed(fdSealedSmall, fdEventfd, fdEventfd, fdPipeRead, fdDevNull, fdSocket, fdUnsealed, fdSealedBig, fdSealedBig, fdEventfd)},
			{op: int(vhost.ReqGetFeatures)},
		})},
		{"truncated-payloads", join(qemuSetup()[:3], []seedStep{
			{op: int(vhost.ReqSetFeatures), mode: modeNeedReply | shapeCut, args: []byte{1}, extra: []byte{3}},
			{op: mem, mode: modeNeedReply | shapeCut, args: []byte{0x80, 0}, extra: []byte{0}},
			{op: int(vhost.ReqSetVringAddr), mode: modeNeedReply | shapeCut, args: []byte{0, 0}, extra: []byte{7}},
			{op: int(vhost.ReqSetVringNum), mode: modeNeedReply | shapeExtend, args: []byte{0, 8}, extra: []byte{4}},
			{op: int(vhost.ReqSetConfig), mode: modeNeedReply | shapeCut, args: []byte{0, 6, 1, 2, 3, 4, 5, 6}, extra: []byte{2}},
			{op: int(vhost.ReqGetConfig), mode: shapeExtend, args: []byte{0, 12}, extra: []byte{1}},
			{op: int(vhost.ReqGetVringBase), mode: shapeCut, args: []byte{0}, extra: []byte{1}},
		})},
		{"bad-regions", join(qemuSetup()[:3], []seedStep{
			{op: mem, mode: modeNeedReply, args: []byte{1, 0, 0x0c}},            // overlap
			{op: mem, mode: modeNeedReply, args: []byte{0, 0x06}},               // size past the file and the limit
			{op: mem, mode: modeNeedReply, args: []byte{0, 0x0a}},               // offset past the end
			{op: mem, mode: modeNeedReply, args: []byte{0, 0x04}},               // zero size
			{op: mem, mode: modeNeedReply, args: []byte{0, 0x09}},               // offset region of the big memfd
			{op: int(vhost.ReqAddMemReg), mode: modeNeedReply, args: []byte{0}}, // overlaps the table
			{op: int(vhost.ReqRemMemReg), mode: modeNeedReply, args: []byte{0x09, 1}},
			{op: int(vhost.ReqAddMemReg), mode: modeNeedReply, args: []byte{1}},
			{op: mem, mode: modeNeedReply, args: []byte{0xf9}}, // 9 regions: 9 fds, more than a message may carry
		})},
		{"mem-slots", join(qemuSetup()[:2], []seedStep{
			{op: int(vhost.ReqSetProtocolFeatures), args: []byte{0}},
			{op: int(vhost.ReqGetMaxMemSlots)},
			{op: int(vhost.ReqAddMemReg), mode: modeNeedReply, args: []byte{0}},
			{op: int(vhost.ReqAddMemReg), mode: modeNeedReply, args: []byte{1}},
			{op: int(vhost.ReqSetVringNum), mode: modeNeedReply, args: []byte{1, 8}},
			{op: int(vhost.ReqSetVringAddr), mode: modeNeedReply, args: []byte{1, 1}},
			{op: int(vhost.ReqSetVringKick), mode: modeNeedReply, args: []byte{1, 0}},
			poll,
			{op: int(vhost.ReqRemMemReg), mode: modeNeedReply, args: []byte{1, 1}},
			poll,
			{op: int(vhost.ReqRemMemReg), mode: modeNeedReply, args: []byte{0, 0}},
		})},
		{"reset-mid-way", join(qemuSetup(), []seedStep{
			{op: int(vhost.ReqResetDevice), mode: modeNeedReply},
			poll,
			{op: int(vhost.ReqSetVringKick), mode: modeNeedReply, args: []byte{0, 0}},
			{op: int(vhost.ReqResetOwner)},
			{op: int(vhost.ReqSetStatus), args: []byte{0}},
		}, qemuSetup()[6:])},
		{"packed-ring", join(qemuSetup()[:3], []seedStep{
			{op: int(vhost.ReqSetFeatures), mode: modeNeedReply, args: []byte{0}},
			{op: mem, mode: modeNeedReply, args: []byte{0, 0}},
			{op: int(vhost.ReqSetVringNum), mode: modeNeedReply, args: []byte{0, 4}},
			{op: int(vhost.ReqSetVringBase), mode: modeNeedReply, args: []byte{0, 3, 0x80, 3, 0x80}},
			{op: int(vhost.ReqSetVringAddr), mode: modeNeedReply, args: []byte{0, 0}},
			{op: int(vhost.ReqSetVringKick), mode: modeNeedReply, args: []byte{0, 0}},
			poll,
			{op: int(vhost.ReqGetVringBase), args: []byte{0}},
		})},
		{"features-under-running-rings", join(qemuSetup(), []seedStep{
			{op: int(vhost.ReqSetFeatures), mode: modeNeedReply, args: []byte{0}},
			{op: int(vhost.ReqSetVringNum), mode: modeNeedReply, args: []byte{0, 9}},
			{op: int(vhost.ReqSetVringEnable), mode: modeNeedReply, args: []byte{0, 0}},
			poll,
			{op: int(vhost.ReqSetVringCall), mode: modeNeedReply, args: []byte{0, 1}},
			{op: int(vhost.ReqSetVringErr), mode: modeNeedReply, args: []byte{0xff, 0}},
			{op: int(vhost.ReqSetVringAddr), mode: modeNeedReply, args: []byte{1, 0x0c}},
			poll,
		})},
		{"config-and-unimplemented", join(qemuSetup()[:2], []seedStep{
			{op: int(vhost.ReqSetProtocolFeatures), args: []byte{0}},
			{op: int(vhost.ReqGetConfig), args: []byte{0, 12}},
			{op: int(vhost.ReqSetConfig), mode: modeNeedReply, args: []byte{0, 6, 2, 0, 0, 0, 0, 7}},
			{op: int(vhost.ReqSendRARP), mode: modeNeedReply},
			{op: int(vhost.ReqNetSetMTU), mode: modeNeedReply, args: []byte{0xdc, 0x05}},
			{op: int(vhost.ReqIOTLBMsg), mode: modeNeedReply},
			{op: int(vhost.ReqSetVringEndian), mode: modeNeedReply},
			{op: int(vhost.ReqVringKick), mode: modeNeedReply},
			{op: int(vhost.ReqGetInflightFD)},
			{op: opRawRequest, mode: modeNeedReply, args: []byte{99, 0, 0, 0}},
			{op: int(vhost.ReqGetStatus)},
		})},
		{"split-sends-then-hang-up", join(qemuSetup()[:3], []seedStep{
			{op: mem, mode: modeNeedReply | modeSplitSend, args: []byte{0, 1}},
			{op: int(vhost.ReqSetVringCall), mode: modeNeedReply | modeSplitSend, args: []byte{0, 0}},
			{op: mem, mode: modeNeedReply | modeHangUp, args: []byte{0, 0}},
		})},
		{"inflight", join(qemuSetup()[:18], []seedStep{
			{op: int(vhost.ReqGetInflightFD)},
			{op: int(vhost.ReqGetInflightFD), args: []byte{6, 1}},                               // too many queues
			{op: int(vhost.ReqSetInflightFD), mode: modeNeedReply, args: []byte{0, 0, 1, 0x30}}, // too small
			{op: int(vhost.ReqSetInflightFD), mode: modeNeedReply},
		}, qemuSetup()[18:], []seedStep{
			txDesc, txAvail, poll, poll,
			{op: int(vhost.ReqSetInflightFD), mode: modeNeedReply}, // rings running: refused
			{op: int(vhost.ReqGetVringBase), args: []byte{1}},
			{op: opPwrite, args: []byte{0x08, 0, 7}}, // corrupt a region's version byte
			{op: int(vhost.ReqSetVringKick), mode: modeNeedReply, args: []byte{1, 0}},
			poll,
		})},
		{"bad-header-after-setup", join(qemuSetup(), []seedStep{
			{op: int(vhost.ReqGetFeatures), mode: modeBadFlags},
			{op: int(vhost.ReqGetFeatures)},
		})},
	}
}

// TestDeviceSessionCorpus checks that the committed seeds are the ones
// sessionSeeds encodes (go test -run TestDeviceSessionCorpus
// -statefuzz.update rewrites them), so that they stay meaningful when the
// input format changes.
func TestDeviceSessionCorpus(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", sessionFuzzName)
	for _, s := range sessionSeeds() {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", encodeSession(s.steps))
		path := filepath.Join(dir, "seed-"+s.name)
		if *updateSessionCorpus {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if errors.Is(err, os.ErrNotExist) {
			t.Errorf("seed %s is not in the corpus (run with -statefuzz.update)", s.name)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if string(got) != want {
			t.Errorf("seed %s differs from what sessionSeeds encodes (run with -statefuzz.update)", s.name)
		}
	}
}
