package portalloc

import (
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/osl"
)

// bindTest binds a socket of b's protocol to b's address and port inside
// ns, and closes it at once. It reports whether a process holds the port
// (EADDRINUSE) or the address is not one of ns's (EADDRNOTAVAIL).
//
// The socket never takes a shortcut that would let it bind over a socket
// that receives on the port:
//
//   - UDP and SCTP sockets set no option: the kernel refuses the bind while
//     any socket is bound to the port (UDP: unless both set SO_REUSEADDR,
//     which ours does not).
//   - TCP sockets set SO_REUSEADDR and are never put in listen. On Linux,
//     SO_REUSEADDR lets a bind share a port only with sockets that also set
//     it and are not listening (inet_bind_conflict in
//     net/ipv4/inet_connection_sock.c): connections in TIME_WAIT, left by a
//     server that exited a moment ago, and connected sockets, which accept
//     no new connection (an established one keeps its conntrack entry, which
//     a new DNAT rule does not change). A listener always conflicts, with or
//     without its own SO_REUSEADDR. Without ours, a server's TIME_WAIT
//     connections would refuse its port for a minute after it exited.
//     SO_REUSEPORT is never set: with it, a bind could share the port of a
//     listener that set it too.
//   - IPv6 sockets set IPV6_V6ONLY, as a DNAT rule for :: serves IPv6 only:
//     a process on 0.0.0.0 does not hold [::]:port. A dual-stack listener on
//     [::] (V6ONLY off) still conflicts with both families.
//
// SCTP is tested only when the kernel has it loaded: otherwise no process
// can hold an SCTP port, and creating the socket would make the kernel load
// the sctp module, a change to the whole machine that publishing a port
// does not need (the DNAT rule works through conntrack, without it).
func bindTest(ns *osl.Namespace, b binding) (bindResult, error) {
	var res bindResult
	err := ns.Do(func() error {
		var err error
		res, err = bindHere(b)
		return err
	})
	return res, err
}

// bindHere is bindTest on the calling thread, inside the namespace.
func bindHere(b binding) (bindResult, error) {
	typ, ipproto := unix.SOCK_STREAM, unix.IPPROTO_TCP
	switch b.proto {
	case udp:
		typ, ipproto = unix.SOCK_DGRAM, unix.IPPROTO_UDP
	case sctp:
		// /proc/thread-self/net shows the calling thread's namespace; the
		// sctp module makes this file in every namespace when it loads.
		if _, err := os.Stat("/proc/thread-self/net/sctp"); errors.Is(err, os.ErrNotExist) {
			return bindFree, nil
		}
		ipproto = unix.IPPROTO_SCTP
	}
	domain := unix.AF_INET6
	var sa unix.Sockaddr = &unix.SockaddrInet6{Port: int(b.port), Addr: b.addr.As16()}
	if b.addr.Is4() {
		domain = unix.AF_INET
		sa = &unix.SockaddrInet4{Port: int(b.port), Addr: b.addr.As4()}
	}
	fd, err := unix.Socket(domain, typ|unix.SOCK_CLOEXEC, ipproto)
	if err != nil {
		return 0, fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	if domain == unix.AF_INET6 {
		if err := unix.SetsockoptInt(fd, unix.IPPROTO_IPV6, unix.IPV6_V6ONLY, 1); err != nil {
			return 0, fmt.Errorf("set IPV6_V6ONLY: %w", err)
		}
	}
	if b.proto == tcp {
		if err := unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_REUSEADDR, 1); err != nil {
			return 0, fmt.Errorf("set SO_REUSEADDR: %w", err)
		}
	}
	switch err := unix.Bind(fd, sa); {
	case err == nil:
		return bindFree, nil
	case errors.Is(err, unix.EADDRINUSE):
		return bindHeld, nil
	case errors.Is(err, unix.EADDRNOTAVAIL):
		return bindNotLocal, nil
	default:
		return 0, fmt.Errorf("bind: %w", err)
	}
}
