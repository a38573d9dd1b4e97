package osl

import (
	"context"
	"errors"
	"fmt"
	"os"
	"runtime"
	"sync"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// threadNS is the namespace file of the calling thread. It names the thread,
// not the process: /proc/self/ns/net would name the main thread's namespace.
const threadNS = "/proc/thread-self/ns/net"

// Namespace is one network namespace with netlink sockets opened inside it.
//
// All methods are safe for concurrent use; requests on one namespace are
// serialised on its socket (the kernel serialises most of them anyway).
// A Namespace keeps the kernel namespace alive until Close or Delete: a
// namespace lives while any file or socket in it is open.
type Namespace struct {
	path  string
	owned bool // made by NewNamespace: Delete unmounts and removes path
	id    ID   // the kernel namespace's identity, read when opened

	// spare holds extra netlink sockets inside the namespace for requests
	// that keep the kernel busy for long (a link deletion takes 20-30 ms):
	// on the shared socket they would queue every other request behind
	// them, and serialise deletions that the kernel can run side by side.
	spare spareSockets

	// mu guards the following fields.
	mu     sync.Mutex
	fd     int // open namespace file, -1 once closed
	handle *netlink.Handle
	raw    *nl.SocketHandle // for requests netlink.Handle cannot build
}

// ID returns the identity of the kernel namespace, read when it was opened.
func (ns *Namespace) ID() ID { return ns.id }

// Path returns the namespace file: a bind mount made by [NewNamespace], or the
// path given to [OpenNamespace].
func (ns *Namespace) Path() string { return ns.path }

// String returns the namespace file's path.
func (ns *Namespace) String() string { return ns.path }

// NewNamespace makes a new network namespace, bind-mounts it at path (which
// must not exist; its directory must) and brings its loopback up.
//
// Equivalent to: `ip netns add` followed by `ip link set lo up` inside, but in
// process. On error nothing is left: no file, no mount, no namespace.
func NewNamespace(ctx context.Context, path string) (*Namespace, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return nil, fmt.Errorf("create namespace file: %w", err)
	}
	f.Close()

	ns := &Namespace{path: path, owned: true, fd: -1}
	err = onFreshThread(func(back func() error) (retErr error) {
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("unshare network namespace: %w", err)
		}
		// From here on the thread is in the new namespace: go back whatever
		// happens, and if that fails, undo what was made.
		defer func() {
			if err := back(); err != nil && retErr == nil {
				ns.closeLocked()
				_ = unix.Unmount(path, unix.MNT_DETACH)
				retErr = err
			}
		}()
		if err := unix.Mount(threadNS, path, "none", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind mount namespace at %s: %w", path, err)
		}
		if err := ns.openHere(); err != nil {
			_ = unix.Unmount(path, unix.MNT_DETACH)
			return err
		}
		// The loopback of a new namespace always has index 1.
		if err := ns.handle.LinkSetUp(&netlink.Device{LinkAttrs: netlink.LinkAttrs{Index: 1}}); err != nil {
			ns.closeLocked()
			_ = unix.Unmount(path, unix.MNT_DETACH)
			return fmt.Errorf("set loopback up: %w", err)
		}
		return nil
	})
	if err != nil {
		_ = os.Remove(path)
		return nil, err
	}
	return ns, nil
}

// OpenNamespace adopts an existing namespace file (a bind mount such as
// /run/netns/x, or /proc/PID/ns/net). [Namespace.Delete] on it only closes it:
// a namespace cnm did not make is never unmounted by cnm.
func OpenNamespace(ctx context.Context, path string) (*Namespace, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	fd, err := unix.Open(path, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("open namespace %s: %w", path, err)
	}
	var st unix.Statfs_t
	if err := unix.Fstatfs(fd, &st); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("open namespace %s: %w", path, err)
	}
	if st.Type != unix.NSFS_MAGIC {
		unix.Close(fd)
		return nil, fmt.Errorf("open namespace %s: %w", path, ErrNotNamespace)
	}
	if typ, err := unix.IoctlRetInt(fd, unix.NS_GET_NSTYPE); err != nil || typ != unix.CLONE_NEWNET {
		unix.Close(fd)
		if err != nil && !errors.Is(err, unix.ENOTTY) && !errors.Is(err, unix.EINVAL) {
			return nil, fmt.Errorf("open namespace %s: %w", path, err)
		}
		return nil, fmt.Errorf("open namespace %s: another kind of namespace: %w", path, ErrNotNamespace)
	}
	ns := &Namespace{path: path, fd: -1}
	err = onFreshThread(func(back func() error) (retErr error) {
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter namespace %s: %w", path, err)
		}
		defer func() {
			if err := back(); err != nil && retErr == nil {
				retErr = err
			}
		}()
		return ns.openHere()
	})
	unix.Close(fd)
	if err != nil {
		return nil, err
	}
	return ns, nil
}

// ReopenNamespace opens a namespace that [NewNamespace] made earlier, by this
// process or one before it (a restarted controller): like [OpenNamespace],
// but [Namespace.Delete] unmounts and removes its file.
func ReopenNamespace(ctx context.Context, path string) (*Namespace, error) {
	ns, err := OpenNamespace(ctx, path)
	if err != nil {
		return nil, err
	}
	ns.owned = true
	return ns, nil
}

// openHere opens the namespace's file and sockets from a thread that is
// already inside it.
func (ns *Namespace) openHere() error {
	fd, err := unix.Open(threadNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open %s: %w", threadNS, err)
	}
	h, err := netlink.NewHandle(unix.NETLINK_ROUTE)
	if err != nil {
		unix.Close(fd)
		return fmt.Errorf("open netlink handle: %w", err)
	}
	sock, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
	if err != nil {
		h.Close()
		unix.Close(fd)
		return fmt.Errorf("open netlink socket: %w", err)
	}
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		sock.Close()
		h.Close()
		unix.Close(fd)
		return fmt.Errorf("stat %s: %w", threadNS, err)
	}
	ns.id = ID{Dev: st.Dev, Ino: st.Ino}
	ns.fd, ns.handle, ns.raw = fd, h, &nl.SocketHandle{Socket: sock}
	return nil
}

// onFreshThread runs fn on a new goroutine whose OS thread is locked. back
// returns the thread to the namespace it started in. Afterwards the thread is
// unlocked only if it is verifiably back in its original namespace; otherwise
// it stays locked and the Go runtime destroys it with the goroutine, so no
// other goroutine can ever run on a thread left in a foreign namespace.
func onFreshThread(fn func(back func() error) error) error {
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open(threadNS, unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open %s: %w", threadNS, err)
			return
		}
		defer unix.Close(orig)
		err = fn(func() error {
			if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
				return fmt.Errorf("return to original namespace: %w", err)
			}
			return nil
		})
		if sameFile(orig, threadNS) {
			runtime.UnlockOSThread()
		}
		errc <- err
	}()
	return <-errc
}

// sameFile reports whether the open fd and path name the same namespace.
func sameFile(fd int, path string) bool {
	var a, b unix.Stat_t
	return unix.Fstat(fd, &a) == nil && unix.Stat(path, &b) == nil && a.Ino == b.Ino && a.Dev == b.Dev
}

// Do runs fn with the calling thread inside the namespace, on a fresh locked
// goroutine, and switches back afterwards. Use it only to open sockets or
// /proc/sys files that must belong to the namespace: a socket opened in fn
// stays in the namespace and may be used from any goroutine afterwards.
// fn must not start goroutines that expect to run in the namespace.
func (ns *Namespace) Do(fn func() error) error {
	ns.mu.Lock()
	fd := -1
	var err error
	if ns.fd >= 0 {
		fd, err = unix.Dup(ns.fd)
	}
	ns.mu.Unlock()
	if fd < 0 {
		if err == nil {
			err = fmt.Errorf("namespace %s: %w", ns.path, ErrClosed)
		}
		return err
	}
	defer unix.Close(fd)
	return onFreshThread(func(back func() error) (retErr error) {
		if err := unix.Setns(fd, unix.CLONE_NEWNET); err != nil {
			return fmt.Errorf("enter namespace %s: %w", ns.path, err)
		}
		defer func() {
			if err := back(); err != nil && retErr == nil {
				retErr = err
			}
		}()
		return fn()
	})
}

// h returns the netlink handle, or ErrClosed.
func (ns *Namespace) h() (*netlink.Handle, error) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.handle == nil {
		return nil, fmt.Errorf("namespace %s: %w", ns.path, ErrClosed)
	}
	return ns.handle, nil
}

// Close closes the namespace's sockets and file. The kernel namespace lives on
// while its bind mount or any process or socket keeps it. Safe to call twice.
func (ns *Namespace) Close() error {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	ns.closeLocked()
	return nil
}

func (ns *Namespace) closeLocked() {
	ns.spare.close()
	if ns.handle != nil {
		ns.handle.Close()
		ns.handle = nil
	}
	if ns.raw != nil {
		ns.raw.Close()
		ns.raw = nil
	}
	if ns.fd >= 0 {
		unix.Close(ns.fd)
		ns.fd = -1
	}
}

// Delete closes the namespace and, when [NewNamespace] made it, unmounts and
// removes its file, so the kernel destroys it (with every link inside) as soon
// as no process uses it any more. Destruction is asynchronous: links whose
// peer lives in another namespace (the host end of a veth) vanish shortly
// after Delete returns. Deleting an already deleted namespace is not an error.
func (ns *Namespace) Delete() error {
	ns.Close()
	return ns.RemoveFile()
}

// RemoveFile unmounts and removes the namespace's file when [NewNamespace]
// made it, and keeps the Namespace open: the kernel namespace lives on,
// reachable through ns only, until Close. (Delete is RemoveFile after
// Close.) For a namespace cnm did not make it does nothing.
func (ns *Namespace) RemoveFile() error {
	if !ns.owned {
		return nil
	}
	return RemoveNamespaceFile(ns.path)
}

// RemoveNamespaceFile unmounts a namespace bind mount and removes the file.
// A path that is not mounted or does not exist is not an error.
func RemoveNamespaceFile(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("unmount namespace %s: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove namespace file %s: %w", path, err)
	}
	return nil
}

// FD returns a duplicate of the namespace's file descriptor, for APIs that
// take a namespace fd (nftables connections). The caller closes it.
func (ns *Namespace) FD() (int, error) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.fd < 0 {
		return -1, fmt.Errorf("namespace %s: %w", ns.path, ErrClosed)
	}
	return unix.Dup(ns.fd)
}

// Inode returns the namespace's inode number, which identifies it uniquely
// while it exists (what `ls -L -i` shows for its file).
func (ns *Namespace) Inode() (uint64, error) {
	ns.mu.Lock()
	defer ns.mu.Unlock()
	if ns.fd < 0 {
		return 0, fmt.Errorf("namespace %s: %w", ns.path, ErrClosed)
	}
	return ns.id.Ino, nil
}
