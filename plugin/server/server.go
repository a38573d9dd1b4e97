// Package server serves cnm's drivers to a Docker daemon (or to cnm's own
// drivers/remote and ipam/remote): an [http.Handler] that answers Docker's
// plugin protocol for one [driverapi.Driver] (NetworkDriver) and one
// [ipam.Allocator] (IpamDriver), either optional.
//
// The daemon owns the container's namespace, so the protocol wants the
// interface of a Join in the host namespace, named in the answer, for the
// daemon to move. The server asks the driver to make it in [Config.HostNS]
// under a fresh name ("cnm" and 10 characters of the endpoint ID): a
// driver that makes its interface inside req.Sandbox, such as cnm's bridge,
// gets the host namespace as the sandbox. At Leave the daemon has moved the
// interface back to the host namespace under that name, and the driver
// deletes it there.
//
// Requests are checked before anything is done: a body that is not JSON, a
// field of the wrong type or an address that does not parse gets the
// protocol's error answer ({"Err": "..."}) with status 400, naming the field
// and the value; a driver's error gets status 500 with its text. A panic in
// a driver is answered as an error too: the server never crashes on a
// request.
//
// With a [Config.Store], a request whose record cannot be written is
// undone and answered with the store's error: a failed create, join,
// request, delete or release leaves the driver, the allocator and the
// records as they were, and a retry can succeed. A Leave is the exception:
// the daemon has already taken the interface back and the driver has
// deleted it; the record that still says joined is corrected by a retry,
// or by the next restore, which finds no interface in the container.
package server

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/netip"
	"sync"

	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin/protocol"
	"github.com/seed53641549/cnm/store"
)

// DefaultMaxRequest bounds a request's body when Config.MaxRequest is zero.
const DefaultMaxRequest = 1 << 20

// Config configures a [Server].
type Config struct {
	// Driver is the network driver to serve; nil: none.
	Driver driverapi.Driver
	// Allocator is the IPAM driver to serve; nil: none.
	Allocator ipam.Allocator
	// HostNS is the namespace the daemon moves interfaces from; required
	// with a Driver.
	HostNS *osl.Namespace
	// MaxRequest bounds a request's body in bytes; zero: DefaultMaxRequest.
	MaxRequest int64
	// Store keeps the networks, endpoints, pools and addresses the daemon
	// made, so that a server made again on it (after a crash or a restart)
	// takes them back: see [New]. Nil: state in memory only, lost with the
	// process.
	Store store.Store
}

// Server answers the plugin protocol. It is safe for concurrent use.
type Server struct {
	cfg Config
	mux *http.ServeMux

	// mu guards the fields below.
	mu        sync.Mutex
	endpoints map[string]*endpoint   // by endpoint ID
	pools     map[string]*serverPool // IPAM pools by the server's pool ID
}

// serverPool is a pool the daemon holds. The server gives it an ID of its
// own, stable across restarts, while the allocator's changes when the pool
// is requested again at restore.
type serverPool struct {
	allocID string
	subnet  netip.Prefix
}

// endpoint is what the daemon told of an endpoint at CreateEndpoint.
type endpoint struct {
	nid        string
	req        driverapi.EndpointRequest
	srcName    string // while joined
	sandboxKey string // while joined
}

var _ http.Handler = (*Server)(nil)

// New returns a server for cfg. Neither a driver nor an allocator, or a
// driver without HostNS, is an error wrapping errdefs.ErrInvalid.
//
// With a Store, New first takes back what it records: the pools and
// addresses are requested again from the allocator (under the pool IDs the
// daemon knows), the networks and endpoints restored in the driver
// (driverapi.Restorer), a joined endpoint with its interface found by MAC
// in the container's namespace; then the driver removes what no record
// explains. An error there fails New.
func New(ctx context.Context, cfg Config) (*Server, error) {
	if cfg.Driver == nil && cfg.Allocator == nil {
		return nil, fmt.Errorf("%w: plugin server: a driver or an allocator is required", errdefs.ErrInvalid)
	}
	if cfg.Driver != nil && cfg.HostNS == nil {
		return nil, fmt.Errorf("%w: plugin server: a driver needs a host namespace", errdefs.ErrInvalid)
	}
	if cfg.MaxRequest <= 0 {
		cfg.MaxRequest = DefaultMaxRequest
	}
	s := &Server{cfg: cfg, mux: http.NewServeMux(), endpoints: map[string]*endpoint{}, pools: map[string]*serverPool{}}
	s.mux.HandleFunc(protocol.PathActivate, s.handle(s.activate))
	if cfg.Driver != nil {
		s.routeNetwork()
	}
	if cfg.Allocator != nil {
		s.routeIPAM()
	}
	if cfg.Store != nil {
		if err := s.restore(ctx); err != nil {
			return nil, fmt.Errorf("restore plugin state: %w", err)
		}
	}
	return s, nil
}

// ServeHTTP answers one call.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		reply(w, http.StatusMethodNotAllowed, protocol.ErrorResponse{Err: fmt.Sprintf("method %s: the protocol posts", r.Method)})
		return
	}
	if _, pattern := s.mux.Handler(r); pattern == "" {
		reply(w, http.StatusNotFound, protocol.ErrorResponse{Err: fmt.Sprintf("no such call %s", r.URL.Path)})
		return
	}
	s.mux.ServeHTTP(w, r)
}

// badRequest marks an error as the caller's: status 400.
type badRequest struct{ error }

func (b badRequest) Unwrap() error { return b.error }

func invalid(format string, args ...any) error {
	return badRequest{fmt.Errorf("%w: "+format, append([]any{errdefs.ErrInvalid}, args...)...)}
}

// handle adapts a call: fn decodes the body itself through decode, and
// returns the answer or an error.
func (s *Server) handle(fn func(ctx context.Context, decode func(any) error) (any, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		body := http.MaxBytesReader(w, r.Body, s.cfg.MaxRequest)
		decode := func(v any) error {
			dec := json.NewDecoder(body)
			if err := dec.Decode(v); err != nil {
				return invalid("request body: %v", err)
			}
			return nil
		}
		resp, err := func() (resp any, err error) {
			defer func() {
				if p := recover(); p != nil {
					err = fmt.Errorf("internal error in %s: %v", r.URL.Path, p)
				}
			}()
			return fn(r.Context(), decode)
		}()
		if err != nil {
			status := http.StatusInternalServerError
			if errors.As(err, new(badRequest)) {
				status = http.StatusBadRequest
			}
			reply(w, status, protocol.ErrorResponse{Err: err.Error()})
			return
		}
		if resp == nil {
			resp = struct{}{}
		}
		reply(w, http.StatusOK, resp)
	}
}

func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", protocol.ContentType)
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func (s *Server) activate(context.Context, func(any) error) (any, error) {
	var impl []string
	if s.cfg.Driver != nil {
		impl = append(impl, protocol.NetworkDriver)
	}
	if s.cfg.Allocator != nil {
		impl = append(impl, protocol.IpamDriver)
	}
	return protocol.ActivateResponse{Implements: impl}, nil
}
