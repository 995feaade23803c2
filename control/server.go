package control

import (
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/zcnet/zcnet/appliance"
	"github.com/zcnet/zcnet/vhost"
)

// Server answers requests on a control socket for one appliance.
type Server struct {
	app     *appliance.Appliance
	command string // the program, as snapshots name it ("run")
	log     *zap.Logger
	// Reload, if set, re-reads the configuration and applies the
	// difference (the reload command; SIGHUP does the same).
	Reload func() ([]string, error)

	// mu serializes requests: each changes the appliance as a whole.
	mu       sync.Mutex
	wg       sync.WaitGroup
	listener *net.UnixListener
}

// NewServer makes a server for app; command names the program in
// snapshots.
func NewServer(app *appliance.Appliance, command string, log *zap.Logger) *Server {
	if log == nil {
		log = zap.NewNop()
	}
	return &Server{app: app, command: command, log: log}
}

// Serve answers requests on l until Close. Clients are served one at a
// time: requests change the appliance as a whole, and a client has
// ioTimeout to send its request and take the answer.
func (s *Server) Serve(l *net.UnixListener) {
	s.listener = l
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		for {
			c, err := l.AcceptUnix()
			if err != nil {
				return // closed
			}
			s.handle(c)
		}
	}()
}

// Close stops serving and removes the socket file.
func (s *Server) Close() {
	if s.listener != nil {
		s.listener.Close()
	}
	s.wg.Wait()
}

func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(ioTimeout))
	req, err := ReadRequest(c)
	var resp Response
	if err != nil {
		resp = Response{Error: err.Error()}
	} else {
		// The request itself (mapping a guest's memory, draining NIC
		// queues) may take longer than the client's I/O allowance.
		_ = c.SetDeadline(time.Time{})
		resp = s.Do(req)
		_ = c.SetDeadline(time.Now().Add(ioTimeout))
	}
	if err := json.NewEncoder(c).Encode(&resp); err != nil {
		s.log.Debug("control client went away", zap.Error(err))
	}
}

// Do carries out one request.
func (s *Server) Do(req Request) Response {
	s.mu.Lock()
	defer s.mu.Unlock()
	resp, err := s.do(req)
	if err != nil {
		s.log.Warn("control request refused", zap.String("command", req.Command), zap.Error(err))
		return Response{Error: err.Error()}
	}
	resp.OK = true
	return resp
}

func (s *Server) do(req Request) (Response, error) {
	switch req.Command {
	case CommandPortAdd:
		if req.Guest == nil {
			return Response{}, errors.New("port-add: give the guest (its socket at least)")
		}
		gi, err := s.app.AddGuest(req.NIC, *req.Guest)
		if err != nil {
			return Response{}, err
		}
		return Response{Guest: &gi}, nil
	case CommandPortDel:
		if req.Socket == "" {
			return Response{}, errors.New("port-del: give the guest's socket")
		}
		return Response{}, s.app.RemoveGuest(req.Socket)
	case CommandPortList:
		return Response{Guests: s.app.Guests(), NICs: s.app.NICs()}, nil
	case CommandPortShow:
		gi, ports, err := s.app.Guest(req.Socket)
		if err != nil {
			return Response{}, err
		}
		return Response{Guest: &gi, Ports: ports}, nil
	case CommandStats:
		snap := s.app.Snapshot(s.command)
		return Response{Snapshot: &snap}, nil
	case CommandReload:
		if s.Reload == nil {
			return Response{}, errors.New("reload: this instance was not started with --config, there is nothing to re-read")
		}
		changes, err := s.Reload()
		return Response{Changes: changes}, err
	case "":
		return Response{}, errors.New("no command given")
	default:
		return Response{}, fmt.Errorf("unknown command %q (known: port-add, port-del, port-list, port-show, stats, reload)", req.Command)
	}
}

// Listen creates the control socket at path with o's mode (default 0600)
// and group, and its directory if missing. A stale socket file is
// replaced; one another instance still answers on is refused.
func Listen(path string, o vhost.SocketOptions) (*net.UnixListener, error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return nil, fmt.Errorf("control socket directory: %w (choose another with --control)", err)
	}
	l, err := vhost.ListenWith(path, o)
	if errors.Is(err, vhost.ErrSocketInUse) {
		return nil, fmt.Errorf("control socket %s is in use by another zcnet; give this one another --control path", path)
	}
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	return l, nil
}
