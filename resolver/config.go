package resolver

import (
	"net/netip"
	"time"
)

// Addr is the resolver's address inside every sandbox, as Docker's. It
// serves on port 53 of it, UDP and TCP.
var Addr = netip.MustParseAddr("127.0.0.11")

// Port is the port the resolver serves on.
const Port = 53

// TTL is the time to live, in seconds, of every answer for a local name,
// as Docker's.
const TTL = 600

// Defaults of [Config].
const (
	DefaultTimeout     = 2 * time.Second
	DefaultMaxInFlight = 64
)

// MaxTCPConns is the number of TCP client connections one server keeps open
// at once. A connection beyond it is closed as soon as it is accepted, and
// the client may retry over UDP or later.
const MaxTCPConns = 16

// Names answers the names one sandbox may resolve. Its methods are called
// concurrently, from the goroutines of the server, and should return
// quickly: a local name is answered on the goroutine that reads the
// server's UDP socket.
type Names interface {
	// Lookup returns the addresses of name (lower case, no trailing dot)
	// of one family: IPv6 when ipv6 is true, else IPv4. ok false: not a
	// local name, forward the query. ok true with no addresses: the name
	// is local but has none of that family (NOERROR, no answer).
	Lookup(name string, ipv6 bool) (addrs []netip.Addr, ok bool)
	// Reverse returns the names (no trailing dot) of a local address;
	// ok false: not local, forward the query.
	Reverse(addr netip.Addr) (names []string, ok bool)
}

// Config is what a [Server] answers and where it forwards. The zero value
// (but for Names) is valid: no forwarding, the defaults below.
type Config struct {
	// Names answers local names. nil: no name is local.
	Names Names
	// Upstreams are the servers that queries for other names are
	// forwarded to, tried in order. An entry that is not a valid address
	// with a port, or that is the resolver's own Addr:Port (a loop), is
	// skipped.
	Upstreams []netip.AddrPort
	// Forward enables forwarding. false (a sandbox on internal networks
	// only), or no usable upstream: a query for a name that is not local
	// is answered REFUSED. REFUSED, not NXDOMAIN: the name may well exist,
	// this server only declines to look it up. NXDOMAIN would state that
	// it does not exist, and stub resolvers and applications cache that
	// (RFC 2308); REFUSED is not cached, and a client with another
	// nameserver in its resolv.conf moves on to it.
	Forward bool
	// Timeout bounds each attempt at one upstream (over UDP, and over TCP
	// for a truncated answer). Zero or negative: DefaultTimeout.
	Timeout time.Duration
	// MaxInFlight bounds the queries this server forwards at once; a query
	// beyond it is answered SERVFAIL at once. Zero or negative:
	// DefaultMaxInFlight.
	MaxInFlight int
}

// config is a Config made ready to serve: defaults applied, unusable
// upstreams dropped. It never changes once made; Update swaps in a new one.
type config struct {
	names       Names
	upstreams   []netip.AddrPort // empty: no forwarding
	timeout     time.Duration
	maxInFlight int32
}

// self is the resolver's own listening address, never an upstream.
var self = netip.AddrPortFrom(Addr, Port)

func newConfig(c Config) *config {
	cfg := &config{names: c.Names, timeout: c.Timeout, maxInFlight: int32(min(c.MaxInFlight, 1<<20))}
	if cfg.names == nil {
		cfg.names = noNames{}
	}
	if cfg.timeout <= 0 {
		cfg.timeout = DefaultTimeout
	}
	if cfg.maxInFlight <= 0 {
		cfg.maxInFlight = DefaultMaxInFlight
	}
	if c.Forward {
		for _, u := range c.Upstreams {
			u = netip.AddrPortFrom(u.Addr().Unmap(), u.Port())
			if u.Addr().IsValid() && !u.Addr().IsUnspecified() && u.Port() != 0 && u != self {
				cfg.upstreams = append(cfg.upstreams, u)
			}
		}
	}
	return cfg
}

// forwarding reports whether names that are not local go upstream.
func (c *config) forwarding() bool { return len(c.upstreams) > 0 }

// noNames is the Names of a Config without any.
type noNames struct{}

func (noNames) Lookup(string, bool) ([]netip.Addr, bool) { return nil, false }
func (noNames) Reverse(netip.Addr) ([]string, bool)      { return nil, false }
