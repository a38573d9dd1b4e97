package osl

import (
	"fmt"
	"sync"

	"github.com/vishvananda/netlink/nl"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// maxSpare bounds the extra netlink sockets of one namespace. Link deletions
// beyond it wait for a free socket.
const maxSpare = 4

// spareSockets is a small pool of netlink sockets opened inside one
// namespace, for slow requests (see [Namespace.withSpare]). The zero value
// is an empty pool.
type spareSockets struct {
	mu     sync.Mutex
	cond   *sync.Cond
	free   []*nl.SocketHandle
	opened int
	closed bool
}

// withSpare runs fn with a socket of the namespace that no other request
// uses meanwhile, opening one if fewer than maxSpare exist.
func (ns *Namespace) withSpare(fn func(*nl.SocketHandle) error) error {
	s := &ns.spare
	s.mu.Lock()
	if s.cond == nil {
		s.cond = sync.NewCond(&s.mu)
	}
	for len(s.free) == 0 && s.opened >= maxSpare && !s.closed {
		s.cond.Wait()
	}
	if s.closed {
		s.mu.Unlock()
		return fmt.Errorf("namespace %s: %w", ns.path, ErrClosed)
	}
	var sh *nl.SocketHandle
	if n := len(s.free); n > 0 {
		sh, s.free = s.free[n-1], s.free[:n-1]
	} else {
		s.opened++
	}
	s.mu.Unlock()

	if sh == nil {
		err := ns.Do(func() error {
			sock, err := nl.GetNetlinkSocketAt(netns.None(), netns.None(), unix.NETLINK_ROUTE)
			if err != nil {
				return fmt.Errorf("open netlink socket: %w", err)
			}
			sh = &nl.SocketHandle{Socket: sock}
			return nil
		})
		if err != nil {
			s.mu.Lock()
			s.opened--
			s.cond.Signal()
			s.mu.Unlock()
			return err
		}
	}
	err := fn(sh)

	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		sh.Close()
		s.opened--
		return err
	}
	s.free = append(s.free, sh)
	s.cond.Signal()
	return err
}

// close closes the free sockets; those in use are closed when returned.
func (s *spareSockets) close() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for _, sh := range s.free {
		sh.Close()
		s.opened--
	}
	s.free = nil
	if s.cond != nil {
		s.cond.Broadcast()
	}
}
