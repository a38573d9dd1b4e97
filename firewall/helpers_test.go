//go:build linux

package firewall

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/binaryutil"
	"github.com/google/nftables/expr"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/internal/acceptloop"
)

// This file holds the test helpers: throwaway namespaces, running code inside
// one, a canonical text form of nftables rules, and a small bridge topology
// for packet tests. The proper versions live in osl and cnmtest; this package
// must not depend on them.

// newNS returns an fd of a new, empty network namespace, closed (and so the
// namespace destroyed) at the end of the test. The test goroutine never
// changes namespace: a helper goroutine locked to its thread unshares and
// switches back.
func newNS(t testing.TB) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	type result struct {
		fd  int
		err error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: err}
			return
		}
		defer unix.Close(orig)
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("unshare: %w", err)}
			return
		}
		fd, oerr := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("setns back: %w", err)} // thread stays locked and dies
			return
		}
		runtime.UnlockOSThread()
		ch <- result{fd: fd, err: oerr}
	}()
	r := <-ch
	require.NoError(t, r.err, "create network namespace")
	t.Cleanup(func() { _ = unix.Close(r.fd) })
	// No duplicate address detection: links come up with usable link-local
	// addresses at once, instead of delaying the first forwarded IPv6 packets.
	writeSysctl(t, r.fd, "net/ipv6/conf/all/accept_dad", "0")
	writeSysctl(t, r.fd, "net/ipv6/conf/default/accept_dad", "0")
	// lo is down in a new namespace.
	h := handle(t, r.fd)
	lo, err := h.LinkByName("lo")
	require.NoError(t, err)
	require.NoError(t, h.LinkSetUp(lo))
	return r.fd
}

// inNS runs fn on a goroutine locked to an OS thread switched into namespace
// fd, then switches the thread back. If switching back fails the thread stays
// locked and the runtime discards it.
func inNS(fd int, fn func() error) error {
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- err
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			ch <- fmt.Errorf("setns: %w", err)
			return
		}
		ferr := fn()
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			ch <- fmt.Errorf("setns back: %w", err)
			return
		}
		runtime.UnlockOSThread()
		ch <- ferr
	}()
	return <-ch
}

// writeSysctl writes value to /proc/sys/<path> inside namespace fd.
func writeSysctl(t testing.TB, fd int, path, value string) {
	t.Helper()
	require.NoError(t, inNS(fd, func() error {
		return os.WriteFile("/proc/sys/"+path, []byte(value), 0o644)
	}))
}

// handle returns a netlink handle bound to namespace fd.
func handle(t testing.TB, fd int) *netlink.Handle {
	t.Helper()
	h, err := netlink.NewHandleAt(netns.NsHandle(fd))
	require.NoError(t, err)
	t.Cleanup(h.Close)
	return h
}

// openFirewall opens a Firewall named "cnm" in namespace fd and deletes and
// closes it at the end of the test.
func openFirewall(t testing.TB, fd int) *Firewall {
	t.Helper()
	f, err := New(context.Background(), fd, "cnm")
	require.NoError(t, err)
	t.Cleanup(func() {
		require.NoError(t, f.Delete(context.Background()))
		require.NoError(t, f.Close())
		assertNoTables(t, fd)
	})
	return f
}

// assertNoTables checks that namespace fd has no nftables table left.
func assertNoTables(t testing.TB, fd int) {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	tables, err := c.ListTables()
	require.NoError(t, err)
	var names []string
	for _, tb := range tables {
		names = append(names, fmt.Sprintf("family %d %s", tb.Family, tb.Name))
	}
	require.Empty(t, names, "tables left in the namespace")
}

// dump renders the inet table name in namespace fd as canonical text: one
// line per chain, then one per rule in evaluation order.
func dump(t testing.TB, fd int, name string) string {
	t.Helper()
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	chains, err := c.ListChains()
	require.NoError(t, err)
	chains = slices.DeleteFunc(chains, func(ch *nftables.Chain) bool {
		return ch.Table.Name != name || ch.Table.Family != nftables.TableFamilyINet
	})
	slices.SortFunc(chains, func(a, b *nftables.Chain) int { return strings.Compare(a.Name, b.Name) })
	var b strings.Builder
	for _, ch := range chains {
		fmt.Fprintf(&b, "inet %s %s%s\n", ch.Table.Name, ch.Name, renderChain(ch))
		rules, err := c.GetRules(ch.Table, ch)
		require.NoError(t, err)
		for _, r := range rules {
			b.WriteString("    " + renderRule(r) + "\n")
		}
	}
	if len(chains) > 0 {
		sets, err := c.GetSets(chains[0].Table)
		require.NoError(t, err)
		slices.SortFunc(sets, func(a, b *nftables.Set) int { return strings.Compare(a.Name, b.Name) })
		for _, set := range sets {
			kind := "set"
			typ := set.KeyType.Name
			if set.IsMap {
				kind, typ = "map", typ+" : "+set.DataType.Name
			}
			fmt.Fprintf(&b, "inet %s %s %s { type %s; }\n", name, kind, set.Name, typ)
			elems, err := c.GetSetElements(set)
			require.NoError(t, err)
			var lines []string
			for _, e := range elems {
				line := renderFields(set.KeyType, e.Key)
				if set.IsMap {
					line += " : " + renderFields(set.DataType, e.Val)
				}
				if e.Comment != "" {
					line += fmt.Sprintf(" comment %q", e.Comment)
				}
				lines = append(lines, "    "+line+"\n")
			}
			slices.Sort(lines)
			b.WriteString(strings.Join(lines, ""))
		}
	}
	return b.String()
}

// renderFields renders the value of a (possibly concatenated) set type:
// fields separated by " . ", each padded to whole 32-bit registers.
func renderFields(typ nftables.SetDatatype, v []byte) string {
	var parts []string
	for _, ft := range nftables.ConcatSetTypeElements(typ) {
		n := int(ft.Bytes)
		padded := (n + 3) / 4 * 4
		if len(nftables.ConcatSetTypeElements(typ)) == 1 {
			padded = n
		}
		if len(v) < n {
			parts = append(parts, "short:0x"+hex.EncodeToString(v))
			break
		}
		f := v[:n]
		v = v[min(padded, len(v)):]
		switch ft.Name {
		case "inet_proto":
			parts = append(parts, map[byte]string{6: "tcp", 17: "udp", 132: "sctp"}[f[0]])
		case "ipv4_addr", "ipv6_addr":
			a, _ := netip.AddrFromSlice(f)
			parts = append(parts, a.String())
		case "inet_service":
			parts = append(parts, fmt.Sprint(binaryutil.BigEndian.Uint16(f)))
		default:
			parts = append(parts, "0x"+hex.EncodeToString(f))
		}
	}
	return strings.Join(parts, " . ")
}

func renderChain(ch *nftables.Chain) string {
	if ch.Hooknum == nil {
		return ""
	}
	hooks := []string{"prerouting", "input", "forward", "output", "postrouting"}
	hook := fmt.Sprint(*ch.Hooknum)
	if int(*ch.Hooknum) < len(hooks) {
		hook = hooks[*ch.Hooknum]
	}
	policy := "?"
	if ch.Policy != nil {
		policy = map[nftables.ChainPolicy]string{nftables.ChainPolicyAccept: "accept", nftables.ChainPolicyDrop: "drop"}[*ch.Policy]
	}
	return fmt.Sprintf(" { type %s hook %s priority %d; policy %s; }", ch.Type, hook, *ch.Priority, policy)
}

// renderRule renders a rule's expressions mechanically, close to nft's
// syntax, with values printed according to what was loaded into the
// register: interface names, IP addresses, protocol families, else hex.
func renderRule(r *nftables.Rule) string {
	var parts []string
	var src string // what register 1 holds
	value := func(b []byte) string {
		switch src {
		case "iifname", "oifname":
			return fmt.Sprintf("%q", string(bytes.TrimRight(b, "\x00")))
		case "nfproto":
			if len(b) == 1 && b[0] == unix.NFPROTO_IPV4 {
				return "ipv4"
			} else if len(b) == 1 && b[0] == unix.NFPROTO_IPV6 {
				return "ipv6"
			}
		case "ct":
			if len(b) == 4 {
				return ctState(binaryutil.NativeEndian.Uint32(b))
			}
		case "ctstatus":
			if len(b) == 4 && binaryutil.NativeEndian.Uint32(b) == ipsDstNAT {
				return "dnat"
			}
		case "fib":
			if len(b) == 4 && binaryutil.NativeEndian.Uint32(b) == unix.RTN_LOCAL {
				return "local"
			}
		case "addr":
			if a, ok := netip.AddrFromSlice(b); ok {
				return a.String()
			}
		}
		return "0x" + hex.EncodeToString(b)
	}
	for _, e := range r.Exprs {
		switch e := e.(type) {
		case *expr.Meta:
			src = map[expr.MetaKey]string{
				expr.MetaKeyIIFNAME: "iifname", expr.MetaKeyOIFNAME: "oifname", expr.MetaKeyNFPROTO: "nfproto",
				expr.MetaKeyL4PROTO: "l4proto",
			}[e.Key]
			if src == "" {
				src = fmt.Sprintf("key%d", e.Key)
			}
			parts = append(parts, "meta "+src+toReg(e.Register))
		case *expr.Ct:
			src = "ct"
			parts = append(parts, fmt.Sprintf("ct key%d", e.Key))
			switch e.Key {
			case expr.CtKeySTATE:
				parts[len(parts)-1] = "ct state"
			case expr.CtKeySTATUS:
				src = "ctstatus"
				parts[len(parts)-1] = "ct status"
			}
		case *expr.Payload:
			src = "addr"
			base := "nh"
			if e.Base == expr.PayloadBaseTransportHeader {
				src, base = "", "th"
			}
			parts = append(parts, fmt.Sprintf("@%s,%d,%d", base, e.Offset, e.Len)+toReg(e.DestRegister))
		case *expr.Fib:
			src = "fib"
			parts = append(parts, fmt.Sprintf("fib daddr=%v type=%v", e.FlagDADDR, e.ResultADDRTYPE)+toReg(e.Register))
		case *expr.Lookup:
			l := fmt.Sprintf("lookup reg %d @%s", e.SourceRegister, e.SetName)
			if e.IsDestRegSet {
				l += fmt.Sprintf(" => reg %d", e.DestRegister)
			}
			parts = append(parts, l)
		case *expr.NAT:
			nat := map[expr.NATType]string{expr.NATTypeDestNAT: "dnat", expr.NATTypeSourceNAT: "snat"}[e.Type]
			fam := map[uint32]string{unix.NFPROTO_IPV4: "ip", unix.NFPROTO_IPV6: "ip6"}[e.Family]
			parts = append(parts, fmt.Sprintf("%s %s addr reg %d proto reg %d", nat, fam, e.RegAddrMin, e.RegProtoMin))
		case *expr.Bitwise:
			parts = append(parts, "& "+value(e.Mask)+" ^ "+value(e.Xor))
		case *expr.Cmp:
			op := map[expr.CmpOp]string{expr.CmpOpEq: "==", expr.CmpOpNeq: "!="}[e.Op]
			parts = append(parts, op+" "+value(e.Data))
		case *expr.Verdict:
			switch e.Kind {
			case expr.VerdictAccept:
				parts = append(parts, "accept")
			case expr.VerdictDrop:
				parts = append(parts, "drop")
			case expr.VerdictJump:
				parts = append(parts, "jump "+e.Chain)
			default:
				parts = append(parts, fmt.Sprintf("verdict(%d) %s", e.Kind, e.Chain))
			}
		case *expr.Masq:
			parts = append(parts, "masquerade")
		default:
			parts = append(parts, fmt.Sprintf("%T%+v", e, e))
		}
	}
	s := strings.Join(parts, " ")
	if id, ok := tagOf(r); ok {
		s += " comment \"" + tagPrefix + id + "\""
	} else if len(r.UserData) > 0 {
		s += " userdata 0x" + hex.EncodeToString(r.UserData)
	}
	return s
}

// toReg renders the register an expression loads into, unless it is
// register 1, where most rules keep everything.
func toReg(r uint32) string {
	if r == 1 {
		return ""
	}
	return fmt.Sprintf(" => reg %d", r)
}

// ctState renders conntrack state bits the way nft names them.
func ctState(v uint32) string {
	if v == 0 {
		return "0"
	}
	var names []string
	for _, s := range []struct {
		bit  uint32
		name string
	}{
		{expr.CtStateBitINVALID, "invalid"}, {expr.CtStateBitESTABLISHED, "established"},
		{expr.CtStateBitRELATED, "related"}, {expr.CtStateBitNEW, "new"}, {expr.CtStateBitUNTRACKED, "untracked"},
	} {
		if v&s.bit != 0 {
			names = append(names, s.name)
			v &^= s.bit
		}
	}
	if v != 0 {
		names = append(names, fmt.Sprintf("0x%x", v))
	}
	return strings.Join(names, ",")
}

// ---- packet tests ----

// addBridge creates bridge name with addresses addrs (the gateways) in
// namespace h.
func addBridge(t testing.TB, h *netlink.Handle, name string, addrs ...netip.Prefix) *netlink.Bridge {
	t.Helper()
	br := &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: name}}
	require.NoError(t, h.LinkAdd(br))
	for _, a := range addrs {
		require.NoError(t, h.AddrAdd(br, &netlink.Addr{IPNet: ipnet(a), Flags: unix.IFA_F_NODAD}))
	}
	require.NoError(t, h.LinkSetUp(br))
	return br
}

// addContainer creates a namespace with an eth0 holding addrs whose peer
// hostIf is a port of br in namespace hostFD, with default routes via gws. It
// returns the container namespace's fd.
func addContainer(t testing.TB, hostFD int, br *netlink.Bridge, hostIf string, addrs []netip.Prefix, gws []netip.Addr) int {
	t.Helper()
	cfd := newNS(t)
	h := handle(t, hostFD)
	veth := &netlink.Veth{
		LinkAttrs:     netlink.LinkAttrs{Name: hostIf, MasterIndex: br.Index},
		PeerName:      "eth0",
		PeerNamespace: netlink.NsFd(cfd),
	}
	require.NoError(t, h.LinkAdd(veth))
	host, err := h.LinkByName(hostIf)
	require.NoError(t, err)
	require.NoError(t, h.LinkSetUp(host))
	configure(t, cfd, addrs, gws, nil)
	return cfd
}

// configure gives eth0 in namespace fd addresses addrs, brings it up, and
// routes dsts (default routes if nil) via gws.
func configure(t testing.TB, fd int, addrs []netip.Prefix, gws []netip.Addr, dsts []netip.Prefix) {
	t.Helper()
	h := handle(t, fd)
	eth0, err := h.LinkByName("eth0")
	require.NoError(t, err)
	for _, a := range addrs {
		require.NoError(t, h.AddrAdd(eth0, &netlink.Addr{IPNet: ipnet(a), Flags: unix.IFA_F_NODAD}))
	}
	require.NoError(t, h.LinkSetUp(eth0))
	for i, gw := range gws {
		r := &netlink.Route{LinkIndex: eth0.Attrs().Index, Gw: gw.AsSlice()}
		if dsts != nil {
			r.Dst = ipnet(dsts[i])
		}
		require.NoError(t, h.RouteAdd(r), "route via %s", gw)
	}
}

// addUplink connects namespace hostFD to a new "outside" namespace through a
// veth pair: hostAddrs on the host end "up0", extAddrs on eth0 in the outside
// namespace, which routes dsts via gws. It returns the outside namespace's fd.
func addUplink(t testing.TB, hostFD int, hostAddrs, extAddrs []netip.Prefix, gws []netip.Addr, dsts []netip.Prefix) int {
	t.Helper()
	efd := newNS(t)
	h := handle(t, hostFD)
	require.NoError(t, h.LinkAdd(&netlink.Veth{
		LinkAttrs: netlink.LinkAttrs{Name: "up0"}, PeerName: "eth0", PeerNamespace: netlink.NsFd(efd),
	}))
	up, err := h.LinkByName("up0")
	require.NoError(t, err)
	for _, a := range hostAddrs {
		require.NoError(t, h.AddrAdd(up, &netlink.Addr{IPNet: ipnet(a), Flags: unix.IFA_F_NODAD}))
	}
	require.NoError(t, h.LinkSetUp(up))
	configure(t, efd, extAddrs, gws, dsts)
	return efd
}

func ipnet(p netip.Prefix) *net.IPNet {
	return &net.IPNet{IP: p.Addr().AsSlice(), Mask: net.CIDRMask(p.Bits(), p.Addr().BitLen())}
}

// serveConns listens on addr inside namespace fd and serves every
// connection with handle (acceptloop.Run) until the test ends.
func serveConns(t testing.TB, fd int, addr string, handle func(net.Conn)) {
	t.Helper()
	var l net.Listener
	require.NoError(t, inNS(fd, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}))
	done := make(chan struct{})
	t.Cleanup(func() {
		_ = l.Close()
		<-done
	})
	go func() {
		defer close(done)
		acceptloop.Run(l, handle)
	}()
}

// remoteAddr is the address a connection comes from, as the server sees it.
func remoteAddr(c net.Conn) string {
	return c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap().String()
}

// serve listens on addr:port inside namespace fd and answers every connection
// with the remote address it sees, until the test ends.
func serve(t testing.TB, fd int, addr netip.Addr, port uint16) {
	t.Helper()
	serveConns(t, fd, netip.AddrPortFrom(addr, port).String(), func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		_, _ = io.WriteString(c, remoteAddr(c))
	})
}

// serveEcho listens on addr:echoPort inside namespace fd and answers every
// connection, once the client has closed its side, with the remote address
// it sees, a space, and what the client sent, until the test ends.
func serveEcho(t testing.TB, fd int, addr netip.Addr) {
	t.Helper()
	serveConns(t, fd, netip.AddrPortFrom(addr, echoPort).String(), func(c net.Conn) {
		_ = c.SetDeadline(time.Now().Add(5 * time.Second))
		if b, err := io.ReadAll(c); err == nil {
			_, _ = io.WriteString(c, remoteAddr(c)+" "+string(b))
		}
	})
}

// echo sends msg on c, a connection to a server of serveEcho, closes its
// side and returns the answer.
func echo(t testing.TB, c net.Conn, msg string) string {
	t.Helper()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	_, err := io.WriteString(c, msg)
	require.NoError(t, err)
	require.NoError(t, c.(*net.TCPConn).CloseWrite())
	b, err := io.ReadAll(c)
	require.NoError(t, err)
	return string(b)
}

// dialTCP connects from namespace fd to to.
func dialTCP(fd int, to netip.AddrPort, timeout time.Duration) (net.Conn, error) {
	var c net.Conn
	err := inNS(fd, func() error {
		var err error
		c, err = net.DialTimeout("tcp", to.String(), timeout)
		return err
	})
	return c, err
}

// dialFrom connects from namespace fd to addr:port and returns the source address
// the server saw.
func dialFrom(fd int, addr netip.Addr, port uint16, timeout time.Duration) (string, error) {
	c, err := dialTCP(fd, netip.AddrPortFrom(addr, port), timeout)
	if err != nil {
		return "", err
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	b, err := io.ReadAll(c)
	return string(b), err
}

const (
	okTimeout      = 5 * time.Second
	blockedTimeout = 300 * time.Millisecond
)

// requireReach checks that a TCP connection from namespace fd to addr
// succeeds and returns the source address the server saw.
func requireReach(t testing.TB, fd int, addr netip.Addr, what string) string {
	t.Helper()
	src, err := dialFrom(fd, addr, testPort, okTimeout)
	require.NoError(t, err, "%s: expected to connect to %s", what, addr)
	return src
}

// requireBlocked checks that a TCP connection from namespace fd to addr
// times out (dropped, not refused).
func requireBlocked(t testing.TB, fd int, addr netip.Addr, what string) {
	t.Helper()
	requireTimeout(t, fd, netip.AddrPortFrom(addr, testPort), what)
}

// requireTimeout checks that a TCP connection from namespace fd to to times
// out (dropped, not refused).
func requireTimeout(t testing.TB, fd int, to netip.AddrPort, what string) {
	t.Helper()
	c, err := dialTCP(fd, to, blockedTimeout)
	if err == nil {
		c.Close()
	}
	require.Error(t, err, "%s: expected %s to be unreachable", what, to)
	var ne net.Error
	require.True(t, errors.As(err, &ne) && ne.Timeout(), "%s: expected a timeout, got %v", what, err)
}

const (
	testPort = 8080 // every namespace of a topology serves it (serve)
	echoPort = 8081 // where a test asks for it (serveEcho)
)
