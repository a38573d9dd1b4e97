// Package osl is cnm's operating-system layer: network namespaces and the links,
// addresses, routes, neighbour entries and sysctls inside them.
//
// It is the only package of cnm that talks netlink to the kernel about network
// objects, and it never runs `ip` or any other program.
//
// It needs Linux. Elsewhere it compiles, so that importers build on any
// system, but no [Namespace] can be made: every function and method returns
// an error wrapping errdefs.ErrNotSupported.
//
// # Namespaces and threads
//
// On Linux a network namespace belongs to an OS thread, not to a process or a
// goroutine. Go moves goroutines between threads at will, so a goroutine that
// switches its thread into another namespace and returns without switching
// back leaves a thread behind that silently opens every later socket of some
// unrelated goroutine in the wrong namespace. Two rules keep that from
// happening here:
//
//  1. Most work needs no thread switch at all. Every [Namespace] owns netlink
//     sockets that were opened inside it once, when it was made or adopted;
//     a netlink socket stays bound to the namespace it was opened in, so all
//     link, address, route and neighbour requests go through those sockets
//     from any goroutine.
//  2. Where a socket or a /proc/sys file must be opened inside a namespace,
//     [Namespace.Do] runs the function on a fresh goroutine whose thread is
//     locked, switched in, and switched back afterwards. If switching back
//     fails, the thread stays locked and the Go runtime destroys it when the
//     goroutine ends, so it can never be reused.
//
// The package-level functions of vishvananda/netlink (netlink.LinkAdd and
// friends) act on whatever namespace the calling thread happens to be in and
// are never used.
//
// # Interrupted dumps
//
// The kernel marks a dump (list links, addresses, routes, neighbours) as
// interrupted when the table changed while it was being read; netlink then
// returns partial results with netlink.ErrDumpInterrupted. Every listing in
// this package goes through one retry helper, so callers always see a
// complete, consistent list or an error.
package osl
