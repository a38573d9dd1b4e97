//go:build linux

// Package firewall programs the nftables rules of one controller: isolation
// between bridge networks, internal networks, masquerading and published
// ports. It talks to the kernel over netlink through
// github.com/google/nftables and never runs nft or iptables.
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
//	    chain published    ct status dnat accept
//	    chain isolate      per network: oifname <br> drop
//	    chain postrouting  nat hook postrouting priority 100, policy accept:
//	                       per subnet of a masquerading network:
//	                       ip saddr <subnet> oifname != <br> masquerade
//	                       per subnet of a network that is not internal (hairpin):
//	                       ip saddr <subnet> oifname <br> ct status dnat masquerade
//	                       per network that is not internal (localhost):
//	                       ip saddr 127.0.0.0/8 oifname <br> masquerade
//	    chain prerouting   nat hook prerouting priority -100, policy accept:
//	                       iifname != "lo" ip daddr 127.0.0.0/8 drop
//	                       dnat ip to meta l4proto . ip daddr . th dport map @ports4
//	                       dnat ip6 to meta l4proto . ip6 daddr . th dport map @ports6
//	                       fib daddr type local dnat ip to meta l4proto . th dport map @ports4-any
//	                       fib daddr type local ip6 daddr != ::1 dnat ip6 to meta l4proto . th dport map @ports6-any
//	    chain output       nat hook output priority -100, policy accept:
//	                       the four dnat rules of prerouting
//	    map ports4         inet_proto . ipv4_addr . inet_service : ipv4_addr . inet_service
//	    map ports6         inet_proto . ipv6_addr . inet_service : ipv6_addr . inet_service
//	    map ports4-any     inet_proto . inet_service : ipv4_addr . inet_service
//	    map ports6-any     inet_proto . inet_service : ipv6_addr . inet_service
//
// The forward chain is a list of stages, each a chain, and a packet leaves
// our table at the first accept or drop:
//
//  1. allow: what a network lets into its bridge: traffic between its own
//     ports (with ICC), and the replies and related packets of established
//     flows.
//  2. internal: an internal network sends nothing out of its bridge and
//     takes nothing new in.
//  3. published: the new flows DNAT'ed to a container, by a published port,
//     are accepted (`ct status dnat accept`, as Docker does). It sees only
//     packets that no earlier stage decided, so never one from or to an
//     internal network.
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
// # Published ports
//
// A published [Port] is one element of one of the four maps, keyed by
// protocol, host address (unless it is the unspecified address) and host
// port, with the container's address and port as its value and the comment
// "cnm:<network id> <bridge>". The rules never change: a packet costs one
// hash lookup per map, however many ports are published. The maps of a
// specific address come first, so such a port wins over one of the same
// number on every address; those of every address apply only to packets
// for an address of this host (`fib daddr type local`).
//
// prerouting DNATs what arrives from outside and from containers; output
// DNATs what the host itself sends, to its own addresses and to 127.0.0.1.
// The DNAT'ed flow passes forward's published stage into the bridge, unless
// the network is internal.
//
// Hairpin: a container that reaches a published port of its own bridge
// through an address of the host is masqueraded, so that the reply returns
// through the host. With br_netfilter the host bridges such a packet straight
// back into the bridge; when it goes back to the port it came from (a
// container reaching its own published port), the bridge must have hairpin
// mode on that port, which is the bridge driver's job.
//
// Localhost: the host reaches a port published on 0.0.0.0 or on a loopback
// address at 127.0.0.1. The packet leaves the bridge from 127.0.0.1, which
// the kernel allows only with net.ipv4.conf.<bridge>.route_localnet=1 (the
// bridge driver sets it on that bridge only), and is masqueraded there. Such
// a bridge would also route a container's packet for 127.0.0.1 to the host's
// loopback services (CVE-2020-8558): prerouting drops new flows to
// 127.0.0.0/8 that did not come from lo. IPv6 has no such switch: the kernel
// never routes a packet from ::1 out of the host, so [::1] is left alone (a
// connection is refused, not DNAT'ed into a black hole) and ::1 cannot be
// published.
//
// Conntrack: a flow that began before a port changed keeps its old
// destination. The caller deletes the conntrack entries of UDP ports after
// publishing and withdrawing them (osl.Namespace.DeleteConntrack).
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
	"sync/atomic"

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
	published   *nftables.Chain   // regular: ct status dnat accept
	isolate     *nftables.Chain   // regular
	postrouting *nftables.Chain   // nat base
	prerouting  *nftables.Chain   // nat base: DNAT of published ports
	output      *nftables.Chain   // nat base: DNAT of published ports, for the host's own traffic
	maps        []portMap         // the DNAT maps of published ports

	portID atomic.Uint32 // netlink port ID of conn (OwnsPortID)

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
		prerouting: &nftables.Chain{Name: chainPrerouting, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookPrerouting, Priority: nftables.ChainPriorityNATDest, Policy: &accept},
		output: &nftables.Chain{Name: chainOutput, Table: t, Type: nftables.ChainTypeNAT,
			Hooknum: nftables.ChainHookOutput, Priority: nftables.ChainPriorityNATDest, Policy: &accept},
		maps: newPortMaps(t),
	}
	f.stages = []*nftables.Chain{f.allow, f.internal, f.published, f.isolate}
	return f
}

// ensureLocked creates the table, its chains and maps if missing and
// (re)writes the fixed rules (the jumps of forward, the rule of published,
// the rules of prerouting and output), in one batch. Map elements and
// per-network rules stay.
func (f *Firewall) ensureLocked() error {
	c, err := f.connLocked()
	if err != nil {
		return err
	}
	if err := f.queueSkeleton(c); err != nil {
		return err
	}
	return f.flushLocked()
}

// queueSkeleton queues, in batch c, the table, its chains and maps (made if
// missing) and the fixed rules (rewritten).
func (f *Firewall) queueSkeleton(c *nftables.Conn) error {
	c.AddTable(f.table)
	for _, m := range f.maps {
		if err := c.AddSet(m.set, nil); err != nil {
			f.dropConnLocked() // discard the partial batch
			return fmt.Errorf("add map %s: %w", m.set.Name, err)
		}
	}
	c.AddChain(f.forward)
	for _, ch := range f.stages {
		c.AddChain(ch)
	}
	c.AddChain(f.postrouting)
	c.AddChain(f.prerouting)
	c.AddChain(f.output)

	c.FlushChain(f.forward)
	for _, ch := range f.stages {
		c.AddRule(&nftables.Rule{Table: f.table, Chain: f.forward, Exprs: []expr.Any{jump(ch.Name)}})
	}
	c.FlushChain(f.published)
	c.AddRule(publishedRule(f.published))
	c.FlushChain(f.prerouting)
	c.AddRule(dropForeignLoopback(f.prerouting))
	for _, r := range dnatRules(f.prerouting, f.maps) {
		c.AddRule(r)
	}
	c.FlushChain(f.output)
	for _, r := range dnatRules(f.output, f.maps) {
		c.AddRule(r)
	}
	return nil
}

// Rebuild replaces the firewall's table, in one transaction, with one that
// holds exactly networks and ports: what a caller uses to put its rules
// back after something else deleted or changed them (a flushed ruleset, a
// deleted chain or map element). Packets never see a half-built table: the
// old one (or none) applies until the new one is whole. Invalid input is
// refused before anything is sent, with an error wrapping
// errdefs.ErrInvalid.
func (f *Firewall) Rebuild(ctx context.Context, networks []Network, ports []Port) error {
	bridges := map[string]bool{}
	for _, n := range networks {
		if err := n.validate(); err != nil {
			return err
		}
		if bridges[n.Bridge] {
			return fmt.Errorf("%w: rebuild: bridge %s is in two networks", errdefs.ErrInvalid, n.Bridge)
		}
		bridges[n.Bridge] = true
	}
	if err := checkBatch(ports, false); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if err := f.usableLocked(); err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	c, err := f.connLocked()
	if err != nil {
		return fmt.Errorf("rebuild: %w", err)
	}
	// Add, then delete: the deletion succeeds whether or not the table
	// is there; the skeleton then makes it anew in the same transaction.
	c.AddTable(f.table)
	c.DelTable(f.table)
	if err := f.queueSkeleton(c); err != nil {
		f.dropConnLocked()
		return fmt.Errorf("rebuild: %w", err)
	}
	for _, n := range networks {
		for _, r := range f.networkRules(n) {
			c.AddRule(r)
		}
	}
	if err := f.addElements(c, byMap(ports, true)); err != nil {
		f.dropConnLocked()
		return fmt.Errorf("rebuild: %w", err)
	}
	if err := f.flushLocked(); err != nil {
		return fmt.Errorf("rebuild table inet %s: %w", f.name, err)
	}
	return nil
}

// dial opens a lasting nftables netlink connection in namespace nsFD with
// large socket buffers (see sockBuf), and records its netlink port ID in
// *portID.
func dial(nsFD int, portID *atomic.Uint32) (*nftables.Conn, error) {
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
			raw, err := c.SyscallConn()
			if err != nil {
				return err
			}
			var serr error
			err = raw.Control(func(fd uintptr) {
				var sa unix.Sockaddr
				if sa, serr = unix.Getsockname(int(fd)); serr == nil {
					if nl, ok := sa.(*unix.SockaddrNetlink); ok {
						portID.Store(nl.Pid)
					}
				}
			})
			return errors.Join(err, serr)
		}),
	)
}

// Name returns the name of the firewall's table.
func (f *Firewall) Name() string { return f.name }

// OwnsPortID reports whether id is the netlink port ID of the firewall's
// connection: the kernel announces every change with the port ID of the
// socket that made it, so a watcher can tell the firewall's own changes
// from anybody else's.
func (f *Firewall) OwnsPortID(id uint32) bool {
	return id != 0 && id == f.portID.Load()
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
	c, err := dial(f.nsFD, &f.portID)
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

// RuleCount returns the number of rules and published ports in this
// firewall's table (used by tests' leak checks). It counts the rules of the
// per-network chains and the elements of the DNAT maps, so the fixed rules
// New installs are not included: after every network and port is removed
// the count is 0.
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
	elems, err := f.portElementsLocked()
	if err != nil {
		return 0, fmt.Errorf("count ports: %w", err)
	}
	for _, es := range elems {
		n += len(es)
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
// AddNetwork, AddPorts, SetPorts and Ports fail with errdefs.ErrNotFound,
// RemoveNetwork and RemovePorts do nothing and RuleCount returns 0; call
// Close to release the connection.
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
