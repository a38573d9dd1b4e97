// Package firewall programs the nftables rules of one controller: isolation
// between bridge networks, inter-container communication (ICC) and
// masquerading. It talks to the kernel over netlink through
// github.com/google/nftables and never runs nft or iptables.
//
// A [Firewall] owns two tables named after the controller in its host network
// namespace:
//
//	table inet <name>
//	    chain forward      filter hook forward priority 0, policy accept:
//	                       jump isolate-in; jump isolate-out
//	    chain isolate-in   per network: oifname <br> iifname <br> accept (ICC only)
//	                                    oifname <br> ct state established,related accept
//	                                    oifname <br> drop
//	    chain isolate-out  per network: iifname <br> accept (drop if internal)
//	    chain postrouting  nat hook postrouting priority 100, policy accept:
//	                       per subnet of a masquerading network:
//	                       ip saddr <subnet> oifname != <br> masquerade
//	table bridge <name>    only when the kernel has CONFIG_NFT_BRIDGE_META
//	    chain forward      filter hook forward priority 0, policy accept:
//	                       per network without ICC:
//	                       meta ibrname <br> meta obrname <br> drop
//
// Every rule of isolate-in is evaluated before any rule of isolate-out, so a
// packet from bridge A to bridge B meets B's `oifname B drop` before A's
// `iifname A accept`. Base chains accept by default: traffic that is not ours
// is never dropped here.
//
// Each per-network rule carries the comment "cnm:<network id>" (rule UserData),
// which is how [Firewall.RemoveNetwork] finds it again, also after a restart.
// The kernel is the only record: a Firewall keeps no per-network state in memory.
//
// # ICC=false
//
// Frames between two ports of one bridge are switched at layer 2 and reach the
// inet forward hook only when br_netfilter is enabled
// (net.bridge.bridge-nf-call-iptables and -ip6tables set to 1 in the host
// namespace, their default once br_netfilter is loaded). Without it only a
// bridge-family rule keyed on the bridge name (`meta ibrname`, `meta obrname`)
// sees them, and those keys need CONFIG_NFT_BRIDGE_META. [Firewall.AddNetwork]
// uses the bridge rule when the kernel supports it. Otherwise, unless the
// caller isolates the bridge's ports itself ([Network.PortsIsolated], as the
// bridge driver does), it relies on br_netfilter and refuses
// (errdefs.ErrNotSupported) a network with ICC=false when neither is
// available, rather than promising an isolation it cannot enforce.
//
// # Namespaces and threads
//
// The netlink socket is opened inside the namespace given to [New] by a
// helper goroutine on a locked OS thread (github.com/mdlayher/socket), so the
// caller's thread never changes namespace. The socket stays bound to that
// namespace for its lifetime. Reading the br_netfilter sysctls of the
// namespace likewise happens on a helper thread that enters the namespace and
// leaves it again (or is discarded if it cannot).
package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"regexp"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/errdefs"
)

// Chain names. They are part of the persistent state: a later version must
// find the chains an earlier one made.
const (
	chainForward     = "forward"
	chainIsolateIn   = "isolate-in"
	chainIsolateOut  = "isolate-out"
	chainPostrouting = "postrouting"
	chainProbe       = "probe-bridge-meta" // exists only inside New's probe batch
)

// sockBuf is the netlink socket buffer size. The kernel echoes every added
// rule back to us; at the default sizes a batch of ~150 rules overflows the
// receive buffer (ENOBUFS) and a large batch no longer fits the send buffer
// (EMSGSIZE).
const sockBuf = 4 << 20

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,32}$`)

// Firewall programs one controller's nftables tables in one network namespace.
//
// All methods are safe for concurrent use; they are serialised, because
// google/nftables collects the messages of a batch in its connection. One
// Firewall should own a table name in a namespace: two instances on the same
// tables do not see each other's in-flight changes.
type Firewall struct {
	name string
	nsFD int // our duplicate of the namespace fd given to New; closed by Close

	inet, bridge *nftables.Table
	forward      *nftables.Chain // inet, base: jumps only
	isolateIn    *nftables.Chain // inet, regular
	isolateOut   *nftables.Chain // inet, regular
	postrouting  *nftables.Chain // inet, nat base
	brForward    *nftables.Chain // bridge, base; exists only if bridgeMeta
	probe        *nftables.Chain // bridge, regular; never survives a batch

	// bridgeMeta is whether the kernel supports meta ibrname/obrname
	// (CONFIG_NFT_BRIDGE_META), probed once by New.
	bridgeMeta bool

	mu      sync.Mutex     // guards all following fields; held across netlink I/O (see type doc)
	conn    *nftables.Conn // nil after a failed operation until the next one redials
	closed  bool           // Close was called
	deleted bool           // Delete removed the tables
}

// New opens a netlink connection in the namespace referred to by nsFD (an open
// fd of /proc/.../ns/net or a bind-mounted netns file) and ensures the
// controller's tables and base chains exist (idempotent: calling New again on
// an existing setup, e.g. after a restart, keeps existing network rules). name
// is the table name (e.g. "cnm" or "cnm-<short id>"), validated: 1..32 chars of
// [a-zA-Z0-9_-].
//
// New duplicates nsFD, so the caller may close its own fd afterwards. The
// forward chain's jump rules are replaced in the same atomic batch that
// ensures the chains, so a restart never leaves a window without isolation.
// Invalid arguments return an error wrapping errdefs.ErrInvalid. On error
// nothing stays open; tables New created before the error are left in place.
func New(ctx context.Context, nsFD int, name string) (*Firewall, error) {
	if !nameRE.MatchString(name) {
		return nil, fmt.Errorf("%w: firewall name %q: must be 1 to 32 characters of [a-zA-Z0-9_-]", errdefs.ErrInvalid, name)
	}
	// fd 0 would mean "the caller's own namespace" to the netlink library.
	if nsFD <= 0 {
		return nil, fmt.Errorf("%w: namespace fd %d", errdefs.ErrInvalid, nsFD)
	}
	if typ, err := unix.IoctlRetInt(nsFD, unix.NS_GET_NSTYPE); err != nil || typ != unix.CLONE_NEWNET {
		return nil, fmt.Errorf("%w: namespace fd %d is not a network namespace", errdefs.ErrInvalid, nsFD)
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fd, err := unix.FcntlInt(uintptr(nsFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate namespace fd %d: %w", nsFD, err)
	}
	f := newFirewall(name, fd)
	if err := f.ensure(); err != nil {
		_ = f.Close()
		return nil, err
	}
	return f, nil
}

// ensure creates what is missing of the tables, chains and jump rules, and
// probes the kernel's bridge support.
func (f *Firewall) ensure() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.ensureInetLocked(); err != nil {
		return fmt.Errorf("ensure table inet %s: %w", f.name, err)
	}
	if err := f.ensureBridgeLocked(); err != nil {
		return fmt.Errorf("ensure table bridge %s: %w", f.name, err)
	}
	return nil
}

// newFirewall returns a Firewall for table name in namespace fd, with its
// table and chain descriptions filled in and no connection yet.
func newFirewall(name string, fd int) *Firewall {
	f := &Firewall{
		name:   name,
		nsFD:   fd,
		inet:   &nftables.Table{Name: name, Family: nftables.TableFamilyINet},
		bridge: &nftables.Table{Name: name, Family: nftables.TableFamilyBridge},
	}
	accept := nftables.ChainPolicyAccept
	f.forward = &nftables.Chain{Name: chainForward, Table: f.inet, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	f.isolateIn = &nftables.Chain{Name: chainIsolateIn, Table: f.inet}
	f.isolateOut = &nftables.Chain{Name: chainIsolateOut, Table: f.inet}
	f.postrouting = &nftables.Chain{Name: chainPostrouting, Table: f.inet, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept}
	f.brForward = &nftables.Chain{Name: chainForward, Table: f.bridge, Type: nftables.ChainTypeFilter,
		Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept}
	f.probe = &nftables.Chain{Name: chainProbe, Table: f.bridge}
	return f
}

// ensureInetLocked creates the inet table and its chains if missing and
// (re)writes the two jump rules of forward, in one batch.
func (f *Firewall) ensureInetLocked() error {
	c, err := f.connLocked()
	if err != nil {
		return err
	}
	c.AddTable(f.inet)
	c.AddChain(f.forward)
	c.AddChain(f.isolateIn)
	c.AddChain(f.isolateOut)
	c.AddChain(f.postrouting)
	c.FlushChain(f.forward)
	c.AddRule(&nftables.Rule{Table: f.inet, Chain: f.forward, Exprs: []expr.Any{jump(chainIsolateIn)}})
	c.AddRule(&nftables.Rule{Table: f.inet, Chain: f.forward, Exprs: []expr.Any{jump(chainIsolateOut)}})
	return f.flushLocked()
}

// ensureBridgeLocked creates the bridge table and its forward chain if the
// kernel can match on a port's bridge name. The probe adds such a rule to a
// scratch chain and removes the chain again within the same batch, so the
// batch either fails as a whole (EOPNOTSUPP: no CONFIG_NFT_BRIDGE_META, or
// no bridge family at all) or leaves only the table and forward chain.
func (f *Firewall) ensureBridgeLocked() error {
	c, err := f.connLocked()
	if err != nil {
		return err
	}
	c.AddTable(f.bridge)
	c.AddChain(f.brForward)
	c.AddChain(f.probe)
	c.AddRule(&nftables.Rule{Table: f.bridge, Chain: f.probe, Exprs: bridgePortToPort("probe")})
	c.FlushChain(f.probe)
	c.DelChain(f.probe)
	err = f.flushLocked()
	switch {
	case err == nil:
		f.bridgeMeta = true
		return nil
	case errors.Is(err, unix.EOPNOTSUPP), errors.Is(err, unix.EAFNOSUPPORT):
		f.bridgeMeta = false
		return nil
	default:
		return err
	}
}

// dial opens a lasting nftables netlink connection in namespace nsFD with
// large socket buffers (see sockBuf).
func dial(nsFD int) (*nftables.Conn, error) {
	return nftables.New(
		nftables.WithNetNSFd(nsFD),
		nftables.AsLasting(),
		nftables.WithSockOptions(func(c *netlink.Conn) error {
			if err := c.SetReadBuffer(sockBuf); err != nil {
				return fmt.Errorf("set netlink receive buffer: %w", err)
			}
			if err := c.SetWriteBuffer(sockBuf); err != nil {
				return fmt.Errorf("set netlink send buffer: %w", err)
			}
			return nil
		}),
	)
}

// usableLocked reports why the firewall cannot be used, if it cannot.
func (f *Firewall) usableLocked() error {
	if f.closed {
		return fmt.Errorf("firewall %s: %w", f.name, net.ErrClosed)
	}
	if f.deleted {
		return fmt.Errorf("firewall %s: tables were deleted: %w", f.name, errdefs.ErrNotFound)
	}
	return nil
}

// connLocked returns the connection, dialling a new one if the last operation
// failed.
func (f *Firewall) connLocked() (*nftables.Conn, error) {
	if f.conn != nil {
		return f.conn, nil
	}
	c, err := dial(f.nsFD)
	if err != nil {
		return nil, fmt.Errorf("open nftables netlink socket: %w", err)
	}
	f.conn = c
	return c, nil
}

// dropConnLocked discards the connection after a failed operation. A failed
// batch can leave unread acknowledgements in the socket, which the next
// operation would take for its own, and google/nftables keeps a serialisation
// error in the Conn for good; a fresh connection has neither.
func (f *Firewall) dropConnLocked() {
	if f.conn != nil {
		_ = f.conn.CloseLasting()
		f.conn = nil
	}
}

// flushLocked sends the batch collected in f.conn. The kernel applies a batch
// atomically: on error none of it took effect.
func (f *Firewall) flushLocked() error {
	if err := f.conn.Flush(); err != nil {
		f.dropConnLocked()
		return err
	}
	return nil
}

// getRulesLocked lists the rules of chain c.
func (f *Firewall) getRulesLocked(c *nftables.Chain) ([]*nftables.Rule, error) {
	conn, err := f.connLocked()
	if err != nil {
		return nil, err
	}
	rules, err := conn.GetRules(c.Table, c)
	if err != nil {
		f.dropConnLocked()
		return nil, fmt.Errorf("list chain %s %s %s: %w", familyName(c.Table.Family), c.Table.Name, c.Name, err)
	}
	return rules, nil
}

// networkChainsLocked returns the chains that hold per-network rules.
func (f *Firewall) networkChainsLocked() []*nftables.Chain {
	chains := []*nftables.Chain{f.isolateIn, f.isolateOut, f.postrouting}
	if f.bridgeMeta {
		chains = append(chains, f.brForward)
	}
	return chains
}

// RuleCount returns the number of rules in this firewall's tables (used by
// tests' leak checks). It counts the rules of the per-network chains, so the
// two fixed jump rules New installs in forward are not included: after every
// network is removed the count is 0.
func (f *Firewall) RuleCount(ctx context.Context) (int, error) {
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return 0, f.usableLocked()
	}
	if f.deleted {
		return 0, nil
	}
	n := 0
	for _, c := range f.networkChainsLocked() {
		rules, err := f.getRulesLocked(c)
		if err != nil {
			return 0, fmt.Errorf("count rules: %w", err)
		}
		n += len(rules)
	}
	return n, nil
}

// Close closes the netlink connection; rules stay in the kernel. Safe to call
// twice. After Close every other method returns an error wrapping
// net.ErrClosed.
func (f *Firewall) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	f.closed = true
	var err error
	if f.conn != nil {
		err = f.conn.CloseLasting()
		f.conn = nil
	}
	if cerr := unix.Close(f.nsFD); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		return fmt.Errorf("close firewall %s: %w", f.name, err)
	}
	return nil
}

// Delete removes this firewall's tables entirely (used when a controller is
// torn down for good, and by tests), with every rule in them, in one batch.
// Tables that are already gone are not an error, so Delete can be called
// twice. Afterwards AddNetwork fails with errdefs.ErrNotFound, RemoveNetwork
// does nothing and RuleCount returns 0; call Close to release the connection.
func (f *Firewall) Delete(ctx context.Context) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return f.usableLocked()
	}
	c, err := f.connLocked()
	if err != nil {
		return err
	}
	tables, err := c.ListTables()
	if err != nil {
		f.dropConnLocked()
		return fmt.Errorf("delete firewall %s: list tables: %w", f.name, err)
	}
	n := 0
	for _, t := range tables {
		if t.Name == f.name && (t.Family == nftables.TableFamilyINet || t.Family == nftables.TableFamilyBridge) {
			c.DelTable(t)
			n++
		}
	}
	if n > 0 {
		if err := f.flushLocked(); err != nil {
			return fmt.Errorf("delete firewall %s: %w", f.name, err)
		}
	}
	f.deleted = true
	return nil
}

func familyName(fam nftables.TableFamily) string {
	switch fam {
	case nftables.TableFamilyINet:
		return "inet"
	case nftables.TableFamilyBridge:
		return "bridge"
	default:
		return fmt.Sprintf("family(%d)", fam)
	}
}

// CountRules returns the number of per-network rules in the tables called
// name in the namespace nsFD, like [Firewall.RuleCount], without making the
// tables if they are missing (then the count is 0): a read-only look for
// leak checks.
func CountRules(ctx context.Context, nsFD int, name string) (int, error) {
	if !nameRE.MatchString(name) {
		return 0, fmt.Errorf("%w: firewall name %q: must be 1 to 32 characters of [a-zA-Z0-9_-]", errdefs.ErrInvalid, name)
	}
	if err := ctx.Err(); err != nil {
		return 0, err
	}
	fd, err := unix.FcntlInt(uintptr(nsFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return 0, fmt.Errorf("duplicate namespace fd %d: %w", nsFD, err)
	}
	f := newFirewall(name, fd)
	defer f.Close()
	f.mu.Lock()
	f.bridgeMeta = true // also look at the bridge table; a missing chain lists no rules
	f.mu.Unlock()
	return f.RuleCount(ctx)
}
