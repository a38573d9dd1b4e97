//go:build linux

// Package firewall programs the nftables rules of one controller: isolation
// between bridge networks, internal networks, and masquerading. It talks to
// the kernel over netlink through github.com/google/nftables and never runs
// nft or iptables.
//
// A [Firewall] owns one table named after the controller in its host network
// namespace:
//
//	table inet <name>
//	    chain forward      filter hook forward priority 0, policy accept:
//	                       jump allow; jump internal; jump published; jump isolate
//	    chain allow        per network: oifname <br> iifname <br> accept (ICC only)
//	                                    oifname <br> ct state established,related accept
//	    chain internal     per internal network: iifname <br> drop
//	                                             oifname <br> drop
//	    chain published    empty: the hook for published ports (see below)
//	    chain isolate      per network: oifname <br> drop
//	    chain postrouting  nat hook postrouting priority 100, policy accept:
//	                       per subnet of a masquerading network:
//	                       ip saddr <subnet> oifname != <br> masquerade
//
// The forward chain is a list of stages, each a chain, and a packet leaves
// our table at the first accept or drop:
//
//  1. allow: what a network lets into its bridge: traffic between its own
//     ports (with ICC), and the replies and related packets of established
//     flows.
//  2. internal: an internal network sends nothing out of its bridge and
//     takes nothing new in.
//  3. published: a hook for port publishing, which will accept the new flows
//     it has DNAT'ed to a container (`ct status dnat accept`, as Docker
//     does). It sees only packets that no earlier stage decided, so never
//     one from or to an internal network. It is empty for now.
//  4. isolate: nothing else new enters a bridge, whether it comes from
//     another bridge or from any other interface of the host. A host with
//     forwarding on is not a router into cnm's bridges: an outside host that
//     routes a container's subnet through it still cannot open a connection
//     to the container.
//
// Traffic out of a bridge that is not internal, and traffic that is not
// ours, is never dropped here: the forward policy accepts it. Another
// table's forward chain (the host's own firewall) still sees every packet
// and may drop it.
//
// Each per-network rule carries the comment "cnm:<network id>" (rule UserData),
// which is how [Firewall.RemoveNetwork] finds it again, also after a restart.
// The kernel is the only record: a Firewall keeps no per-network state in memory.
//
// # ICC
//
// Frames between two ports of one bridge are switched at layer 2 and reach
// the inet forward hook only when br_netfilter passes them there
// (net.bridge.bridge-nf-call-iptables and -ip6tables). This package does not
// rely on it: a caller that turns ICC off isolates the bridge's ports itself
// (IFLA_BRPORT_ISOLATED, as the bridge driver does), so such frames never
// leave the bridge. When br_netfilter does pass them, [Network.ICC] decides
// whether allow accepts them; without ICC they are dropped too.
//
// # Namespaces and threads
//
// The netlink socket is opened inside the namespace given to [New] by a
// helper goroutine on a locked OS thread (github.com/mdlayher/socket), so the
// caller's thread never changes namespace. The socket stays bound to that
// namespace for its lifetime.
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
	chainAllow       = "allow"
	chainInternal    = "internal"
	chainPublished   = "published"
	chainIsolate     = "isolate"
	chainPostrouting = "postrouting"
)

// sockBuf is the netlink socket buffer size. The kernel echoes every added
// rule back to us; at the default sizes a batch of ~150 rules overflows the
// receive buffer (ENOBUFS) and a large batch no longer fits the send buffer
// (EMSGSIZE).
const sockBuf = 4 << 20

var nameRE = regexp.MustCompile(`^[a-zA-Z0-9_-]{1,32}$`)

// Firewall programs one controller's nftables table in one network namespace.
//
// All methods are safe for concurrent use; they are serialised, because
// google/nftables collects the messages of a batch in its connection. One
// Firewall should own a table name in a namespace: two instances on the same
// table do not see each other's in-flight changes.
type Firewall struct {
	name string
	nsFD int // our duplicate of the namespace fd given to New; closed by Close

	table       *nftables.Table
	forward     *nftables.Chain   // base: jumps only
	stages      []*nftables.Chain // what forward jumps to, in order
	allow       *nftables.Chain   // regular
	internal    *nftables.Chain   // regular
	published   *nftables.Chain   // regular, empty: port publishing's hook
	isolate     *nftables.Chain   // regular
	postrouting *nftables.Chain   // nat base

	mu      sync.Mutex     // guards all following fields; held across netlink I/O (see type doc)
	conn    *nftables.Conn // nil after a failed operation until the next one redials
	closed  bool           // Close was called
	deleted bool           // Delete removed the table
}

// New opens a netlink connection in the namespace referred to by nsFD (an open
// fd of /proc/.../ns/net or a bind-mounted netns file) and ensures the
// controller's table and chains exist (idempotent: calling New again on
// an existing setup, e.g. after a restart, keeps existing network rules). name
// is the table name (e.g. "cnm" or "cnm-<short id>"), validated: 1..32 chars of
// [a-zA-Z0-9_-].
//
// New duplicates nsFD, so the caller may close its own fd afterwards. The
// forward chain's jump rules are replaced in the same atomic batch that
// ensures the chains, so a restart never leaves a window without isolation.
// Invalid arguments return an error wrapping errdefs.ErrInvalid. On error
// nothing stays open; a table New created before the error is left in place.
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
	f.mu.Lock()
	err = f.ensureLocked()
	f.mu.Unlock()
	if err != nil {
		_ = f.Close()
		return nil, fmt.Errorf("ensure table inet %s: %w", name, err)
	}
	return f, nil
}

// newFirewall returns a Firewall for table name in namespace fd, with its
// table and chain descriptions filled in and no connection yet.
func newFirewall(name string, fd int) *Firewall {
	t := &nftables.Table{Name: name, Family: nftables.TableFamilyINet}
	regular := func(name string) *nftables.Chain { return &nftables.Chain{Name: name, Table: t} }
	accept := nftables.ChainPolicyAccept
	f := &Firewall{
		name:  name,
		nsFD:  fd,
		table: t,
		forward: &nftables.Chain{Name: chainForward, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: nftables.ChainHookForward, Priority: nftables.ChainPriorityFilter, Policy: &accept},
		allow:     regular(chainAllow),
		internal:  regular(chainInternal),
		published: regular(chainPublished),
		isolate:   regular(chainIsolate),
		postrouting: &nftables.Chain{Name: chainPostrouting, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource, Policy: &accept},
	}
	f.stages = []*nftables.Chain{f.allow, f.internal, f.published, f.isolate}
	return f
}

// ensureLocked creates the table and its chains if missing and (re)writes
// the jump rules of forward, in one batch.
func (f *Firewall) ensureLocked() error {
	c, err := f.connLocked()
	if err != nil {
		return err
	}
	c.AddTable(f.table)
	c.AddChain(f.forward)
	for _, ch := range f.stages {
		c.AddChain(ch)
	}
	c.AddChain(f.postrouting)
	c.FlushChain(f.forward)
	for _, ch := range f.stages {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: f.forward, Exprs: []expr.Any{jump(ch.Name)}})
	}
	return f.flushLocked()
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
		return fmt.Errorf("firewall %s: table was deleted: %w", f.name, errdefs.ErrNotFound)
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
		return nil, fmt.Errorf("list chain inet %s %s: %w", c.Table.Name, c.Name, err)
	}
	return rules, nil
}

// networkChains returns the chains that hold per-network rules.
func (f *Firewall) networkChains() []*nftables.Chain {
	return []*nftables.Chain{f.allow, f.internal, f.isolate, f.postrouting}
}

// RuleCount returns the number of rules in this firewall's table (used by
// tests' leak checks). It counts the rules of the per-network chains, so the
// fixed jump rules New installs in forward are not included: after every
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
	for _, c := range f.networkChains() {
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

// Delete removes this firewall's table entirely (used when a controller is
// torn down for good, and by tests), with every rule in it. A table that is
// already gone is not an error, so Delete can be called twice. Afterwards
// AddNetwork fails with errdefs.ErrNotFound, RemoveNetwork does nothing and
// RuleCount returns 0; call Close to release the connection.
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
	c.DelTable(f.table)
	if err := f.flushLocked(); err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("delete firewall %s: %w", f.name, err)
	}
	f.deleted = true
	return nil
}

// CountRules returns the number of per-network rules in the table called
// name in the namespace nsFD, like [Firewall.RuleCount], without making the
// table if it is missing (then the count is 0): a read-only look for leak
// checks.
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
	return f.RuleCount(ctx)
}
