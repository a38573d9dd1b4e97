//go:build linux

package firewall

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/errdefs"
)

// This file holds service load balancing: a table in the namespace of each
// client (a sandbox), not in the host's, that sends every new connection
// to a service's virtual IP to one of its backends in turn:
//
//	table inet <name>
//	    chain services        nat hook output priority -100:
//	                          per service with backends:
//	                          ip daddr <vip> dnat ip to numgen inc mod <n> map { 0 : <b0>, 1 : <b1>, ... }
//	    chain services-refuse filter hook output priority 0:
//	                          per service: ip daddr <vip> ct state new reject
//
// A connection is translated once, when it starts; conntrack keeps its
// backend for its life, so rewriting the map never moves or breaks an
// established connection, and a backend taken out of the map gets no new
// one. The refuse chain sees only packets the nat chain left addressed to
// the VIP: those of a service with no backend, which are refused at once
// instead of waiting for an ARP answer that never comes. Its conntrack
// match also keeps conntrack on in the namespace: the kernel tracks
// connections in a namespace only while some rule needs it, and a nat
// chain alone does not. Without it, taking the last backend out of every
// map would turn conntrack off, and with it the translation of the
// connections already established.
//
// The table is rewritten whole, in one transaction, on every change: a
// client sees one set of services or the next, never a mix. The map is
// anonymous and bound to its rule, so it goes with the rule.
//
// Why the client's namespace: the translated packet leaves the client
// already addressed to the backend and crosses the bridge as any other
// packet between two containers, so the backend sees the client's own
// address, the bridge's port isolation still applies, and the replies
// come straight back to the client's conntrack, which translates them
// back. Rules on the host would need the VIP answered on the bridge and
// the connection masqueraded so that replies come back through the host
// (see BenchmarkServiceConnect for the cost of each).
//
// [Services] keeps a table right: a client's namespace gets one.

// Chain names of the services table.
const (
	chainServices       = "services"
	chainServicesRefuse = "services-refuse"
)

// Services programs the services table of one client namespace. It keeps
// one netlink connection open for its life: closing a connection right
// after a transaction that deleted rules makes the kernel wait for an RCU
// grace period (14 ms on a small VM, against 50 us for the whole update)
// while it holds the namespace's nftables lock, so a connection per update
// would cost every update that wait. Safe for concurrent use.
type Services struct {
	mu    sync.Mutex
	nsFD  int
	name  string
	hook  *nftables.ChainHook
	conn  *nftables.Conn
	close bool
}

// NewServices returns a Services for table name (family inet) in namespace
// nsFD, which it duplicates (the caller may close nsFD; Close closes the
// copy). Nothing is written until [Services.Set]. The name is 1 to 255
// bytes without NUL.
func NewServices(nsFD int, name string) (*Services, error) {
	return newServices(nsFD, name, nftables.ChainHookOutput)
}

// newServices is NewServices with the nat chain on hook; on prerouting
// (the host placement, measured in tests) there is no refuse chain, since
// reject is not allowed there.
func newServices(nsFD int, name string, hook *nftables.ChainHook) (*Services, error) {
	if name == "" || len(name) > unix.NFT_TABLE_MAXNAMELEN-1 || strings.ContainsRune(name, 0) {
		return nil, fmt.Errorf("%w: services table name %q: must be 1 to %d bytes without NUL", errdefs.ErrInvalid, name, unix.NFT_TABLE_MAXNAMELEN-1)
	}
	fd, err := unix.FcntlInt(uintptr(nsFD), unix.F_DUPFD_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("duplicate namespace fd %d: %w", nsFD, err)
	}
	return &Services{nsFD: fd, name: name, hook: hook}, nil
}

// Set makes the table hold exactly svcs, in one transaction; with none,
// the table is deleted (and absent is no error). Invalid input (a VIP that
// is not a valid address or has a zone, a backend of another family or
// listed twice, a VIP listed twice) is refused with an error wrapping
// [errdefs.ErrInvalid] before anything is written.
func (s *Services) Set(ctx context.Context, svcs []Service) error {
	if err := validateServices(svcs); err != nil {
		return err
	}
	if err := ctx.Err(); err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.close {
		return fmt.Errorf("services table %s: %w", s.name, net.ErrClosed)
	}
	if s.conn == nil {
		c, err := nftables.New(nftables.WithNetNSFd(s.nsFD), nftables.AsLasting())
		if err != nil {
			return fmt.Errorf("services table %s: open nftables netlink socket: %w", s.name, err)
		}
		s.conn = c
	}
	if err := s.write(svcs); err != nil {
		// A failed batch can leave unread acknowledgements behind: the
		// next Set starts on a fresh connection.
		_ = s.conn.CloseLasting()
		s.conn = nil
		return err
	}
	return nil
}

// write queues the transaction for svcs and sends it.
func (s *Services) write(svcs []Service) error {
	c := s.conn
	t := c.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: s.name})
	if len(svcs) == 0 {
		// Add, then delete: one transaction that succeeds whether or not
		// the table exists.
		c.DelTable(t)
		if err := c.Flush(); err != nil {
			return fmt.Errorf("services table %s: delete: %w", s.name, err)
		}
		return nil
	}
	nat := c.AddChain(&nftables.Chain{Name: chainServices, Table: t, Type: nftables.ChainTypeNAT,
		Hooknum: s.hook, Priority: nftables.ChainPriorityNATDest})
	c.FlushChain(nat)
	var refuse *nftables.Chain
	if s.hook == nftables.ChainHookOutput {
		refuse = c.AddChain(&nftables.Chain{Name: chainServicesRefuse, Table: t, Type: nftables.ChainTypeFilter,
			Hooknum: s.hook, Priority: nftables.ChainPriorityFilter})
		c.FlushChain(refuse)
	}
	for i, svc := range svcs {
		match := matchPrefix(netip.PrefixFrom(svc.VIP, svc.VIP.BitLen()), true)
		if len(svc.Backends) > 0 {
			m := backendMap(t, uint32(i+1), svc)
			if err := c.AddSet(m, backendElements(svc.Backends)); err != nil {
				return fmt.Errorf("services table %s: service %s: %w", s.name, svc.VIP, err)
			}
			c.AddRule(&nftables.Rule{Table: t, Chain: nat, Exprs: concat(match, dnatToBackend(m, svc))})
		}
		if refuse != nil {
			c.AddRule(&nftables.Rule{Table: t, Chain: refuse, Exprs: concat(match, matchNew(), []expr.Any{
				&expr.Reject{Type: unix.NFT_REJECT_ICMPX_UNREACH, Code: unix.NFT_REJECT_ICMPX_PORT_UNREACH},
			})})
		}
	}
	if err := c.Flush(); err != nil {
		return fmt.Errorf("services table %s: write %d services: %w", s.name, len(svcs), err)
	}
	return nil
}

// Close closes the connection and its copy of the namespace fd; the table
// stays as it is. Safe to call twice. It may take an
// RCU grace period (see [Services]). Set after Close fails.
func (s *Services) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.close {
		return nil
	}
	s.close = true
	var err error
	if s.conn != nil {
		err = s.conn.CloseLasting()
		s.conn = nil
	}
	return errors.Join(err, unix.Close(s.nsFD))
}

// validateServices checks the input of Services.Set.
func validateServices(svcs []Service) error {
	vips := map[netip.Addr]bool{}
	for _, s := range svcs {
		if !s.VIP.IsValid() || s.VIP.Zone() != "" || s.VIP.Is4In6() || s.VIP.IsUnspecified() {
			return fmt.Errorf("%w: service vip %q: not an IPv4 or IPv6 address without zone", errdefs.ErrInvalid, s.VIP)
		}
		if vips[s.VIP] {
			return fmt.Errorf("%w: service vip %s listed twice", errdefs.ErrInvalid, s.VIP)
		}
		vips[s.VIP] = true
		seen := map[netip.Addr]bool{}
		for _, b := range s.Backends {
			if !b.IsValid() || b.Zone() != "" || b.Is4() != s.VIP.Is4() || b.Is4In6() {
				return fmt.Errorf("%w: service %s: backend %q is not an address of the vip's family", errdefs.ErrInvalid, s.VIP, b)
			}
			if seen[b] {
				return fmt.Errorf("%w: service %s: backend %s listed twice", errdefs.ErrInvalid, s.VIP, b)
			}
			seen[b] = true
		}
	}
	return nil
}

// backendMap describes the anonymous map of one service, `{ 0 : <b0>,
// 1 : <b1>, ... }`: the key is numgen's 32-bit number in host byte order,
// the data a backend's address. id must be unique in the transaction; the
// rule finds the new map by it.
func backendMap(t *nftables.Table, id uint32, s Service) *nftables.Set {
	data := nftables.TypeIPAddr
	if s.VIP.Is6() {
		data = nftables.TypeIP6Addr
	}
	return &nftables.Set{Table: t, ID: id, Name: "__map%d", Anonymous: true, Constant: true, IsMap: true,
		KeyType: nftables.TypeInteger, DataType: data}
}

// backendElements numbers the backends from 0.
func backendElements(backends []netip.Addr) []nftables.SetElement {
	elems := make([]nftables.SetElement, len(backends))
	for i, b := range backends {
		elems[i] = nftables.SetElement{Key: binaryutil.NativeEndian.PutUint32(uint32(i)), Val: b.AsSlice()}
	}
	return elems
}

// dnatToBackend is `dnat ip to numgen inc mod <n> map <m>` (ip6 for an
// IPv6 VIP): the next number in turn, looked up in the map, gives the
// backend's address in register 1, which the NAT reads. The port stays.
func dnatToBackend(m *nftables.Set, s Service) []expr.Any {
	family := uint32(unix.NFPROTO_IPV4)
	if s.VIP.Is6() {
		family = unix.NFPROTO_IPV6
	}
	return []expr.Any{
		&expr.Numgen{Register: reg1, Modulus: uint32(len(s.Backends)), Type: unix.NFT_NG_INCREMENTAL},
		&expr.Lookup{SourceRegister: reg1, SetName: m.Name, SetID: m.ID, DestRegister: reg1, IsDestRegSet: true},
		&expr.NAT{Type: expr.NATTypeDestNAT, Family: family, RegAddrMin: reg1},
	}
}

// matchNew is `ct state new`.
func matchNew() []expr.Any {
	return []expr.Any{
		&expr.Ct{Register: reg1, Key: expr.CtKeySTATE},
		&expr.Bitwise{SourceRegister: reg1, DestRegister: reg1, Len: 4,
			Mask: binaryutil.NativeEndian.PutUint32(expr.CtStateBitNEW), Xor: binaryutil.NativeEndian.PutUint32(0)},
		&expr.Cmp{Op: expr.CmpOpNeq, Register: reg1, Data: binaryutil.NativeEndian.PutUint32(0)},
	}
}
