package watch

import (
	"fmt"
	"os"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/nftables"
	mdnetlink "github.com/mdlayher/netlink"
	"github.com/stretchr/testify/require"
	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"
)

// newNS returns an fd of a new network namespace, closed at the end of the
// test; the test's thread never changes namespace.
func newNS(t *testing.T) int {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root to create network namespaces")
	}
	ch := make(chan int, 1)
	go func() {
		runtime.LockOSThread() // the thread dies with its namespace changed
		h, err := netns.New()
		if err != nil {
			ch <- -1
			return
		}
		ch <- int(h)
	}()
	fd := <-ch
	require.Positive(t, fd)
	t.Cleanup(func() { unix.Close(fd) })
	return fd
}

// collector gathers changes.
type collector struct {
	mu  sync.Mutex
	got []Change
}

func (c *collector) add(ch Change) {
	c.mu.Lock()
	c.got = append(c.got, ch)
	c.mu.Unlock()
}

// wait returns once a change matching ok arrived, failing after a second.
func (c *collector) wait(t *testing.T, what string, ok func(Change) bool) Change {
	t.Helper()
	return c.waitFrom(t, 0, what, ok)
}

// waitFrom is wait among the changes after the first from.
func (c *collector) waitFrom(t *testing.T, from int, what string, ok func(Change) bool) Change {
	t.Helper()
	deadline := time.Now().Add(time.Second)
	for time.Now().Before(deadline) {
		c.mu.Lock()
		for _, ch := range c.got[from:] {
			if ok(ch) {
				c.mu.Unlock()
				return ch
			}
		}
		c.mu.Unlock()
		time.Sleep(time.Millisecond)
	}
	t.Fatalf("no change: %s", what)
	return Change{}
}

// len returns how many changes arrived so far.
func (c *collector) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.got)
}

func (c *collector) count(k Kind) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, ch := range c.got {
		if ch.Kind == k {
			n++
		}
	}
	return n
}

func TestWatch(t *testing.T) {
	fd := newNS(t)
	h, err := netlink.NewHandleAt(netns.NsHandle(fd))
	require.NoError(t, err)
	defer h.Close()
	var c collector
	var ownPID atomic.Uint32
	w, err := Start(Config{NSFD: fd, Table: "ours", Own: func(p uint32) bool { return p == ownPID.Load() }}, c.add)
	require.NoError(t, err)
	defer w.Close()

	// Links: made, set down, deleted.
	require.NoError(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}}))
	br, err := h.LinkByName("br0")
	require.NoError(t, err)
	idx := br.Attrs().Index
	require.NoError(t, h.LinkSetUp(br))
	c.wait(t, "br0 up", func(ch Change) bool { return ch.Kind == Link && ch.Index == idx && ch.Name == "br0" && ch.Up })
	from := c.len()
	require.NoError(t, h.LinkSetDown(br))
	c.waitFrom(t, from, "br0 down", func(ch Change) bool {
		return ch.Kind == Link && ch.Index == idx && !ch.Up && !ch.Deleted
	})
	require.NoError(t, h.LinkDel(br))
	c.wait(t, "br0 deleted", func(ch Change) bool { return ch.Kind == Link && ch.Index == idx && ch.Deleted })

	// A port taken off its bridge is not reported deleted (the kernel
	// announces the port's removal in the bridge family as a deletion).
	require.NoError(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br1"}}))
	br1, err := h.LinkByName("br1")
	require.NoError(t, err)
	require.NoError(t, h.LinkAdd(&netlink.Veth{LinkAttrs: netlink.LinkAttrs{Name: "port0"}, PeerName: "peer0"}))
	port, err := h.LinkByName("port0")
	require.NoError(t, err)
	pidx := port.Attrs().Index
	require.NoError(t, h.LinkSetMaster(port, br1))
	c.wait(t, "port0 on br1", func(ch Change) bool { return ch.Kind == Link && ch.Index == pidx && ch.Master == br1.Attrs().Index })
	from = c.len()
	require.NoError(t, h.LinkSetNoMaster(port))
	c.waitFrom(t, from, "port0 off br1", func(ch Change) bool { return ch.Kind == Link && ch.Index == pidx && ch.Master == 0 })
	require.NoError(t, h.LinkDel(br1))
	c.wait(t, "br1 deleted", func(ch Change) bool { return ch.Kind == Link && ch.Index == br1.Attrs().Index && ch.Deleted })
	c.mu.Lock()
	for _, ch := range c.got {
		require.False(t, ch.Kind == Link && ch.Index == pidx && ch.Deleted, "port0 reported deleted: %+v", ch)
	}
	c.mu.Unlock()

	// Forwarding, both families.
	writeSysctl(t, fd, "net/ipv4/ip_forward", "1")
	c.wait(t, "ipv4 forwarding on", func(ch Change) bool { return ch.Kind == Forwarding && !ch.IPv6 && ch.On })
	writeSysctl(t, fd, "net/ipv4/ip_forward", "0")
	c.wait(t, "ipv4 forwarding off", func(ch Change) bool { return ch.Kind == Forwarding && !ch.IPv6 && !ch.On })
	writeSysctl(t, fd, "net/ipv6/conf/all/forwarding", "1")
	c.wait(t, "ipv6 forwarding on", func(ch Change) bool { return ch.Kind == Forwarding && ch.IPv6 && ch.On })

	// nftables: another table is not reported, ours is, unless the change
	// came through one of our own sockets.
	nft, err := nftables.New(nftables.WithNetNSFd(fd), nftables.AsLasting(),
		nftables.WithSockOptions(func(nc *mdnetlink.Conn) error {
			raw, err := nc.SyscallConn()
			if err != nil {
				return err
			}
			return raw.Control(func(s uintptr) {
				sa, _ := unix.Getsockname(int(s))
				ownPID.Store(sa.(*unix.SockaddrNetlink).Pid)
			})
		}))
	require.NoError(t, err)
	defer nft.CloseLasting()
	require.NotZero(t, ownPID.Load())
	other, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	other.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "theirs"})
	require.NoError(t, other.Flush())
	nft.AddTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "ours"})
	require.NoError(t, nft.Flush())
	time.Sleep(50 * time.Millisecond)
	require.Zero(t, c.count(Firewall), "neither their table nor our own change is reported")
	other.DelTable(&nftables.Table{Family: nftables.TableFamilyINet, Name: "ours"})
	require.NoError(t, other.Flush())
	c.wait(t, "our table deleted by another socket", func(ch Change) bool { return ch.Kind == Firewall })
	require.Zero(t, c.count(Resync))
	require.NoError(t, w.Close())
}

// TestWatchOverrun: with a tiny receive buffer, a burst of changes
// overruns the socket, which is reported as Resync.
func TestWatchOverrun(t *testing.T) {
	fd := newNS(t)
	h, err := netlink.NewHandleAt(netns.NsHandle(fd))
	require.NoError(t, err)
	defer h.Close()
	var c collector
	block := make(chan struct{})
	var once sync.Once
	w, err := Start(Config{NSFD: fd, Table: "ours", RecvBuffer: 1024}, func(ch Change) {
		once.Do(func() { <-block }) // the reader stalls while the burst comes
		c.add(ch)
	})
	require.NoError(t, err)
	defer w.Close()
	for i := range 200 {
		require.NoError(t, h.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: fmt.Sprintf("b%d", i)}}))
	}
	close(block)
	c.wait(t, "resync after overrun", func(ch Change) bool { return ch.Kind == Resync })
}

// writeSysctl writes a sysctl of namespace fd.
func writeSysctl(t *testing.T, fd int, name, value string) {
	t.Helper()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		if err := netns.Set(netns.NsHandle(fd)); err != nil {
			errc <- err
			return
		}
		errc <- os.WriteFile("/proc/sys/"+name, []byte(value), 0o644)
		if netns.Set(orig) == nil {
			runtime.UnlockOSThread()
		}
		orig.Close()
	}()
	require.NoError(t, <-errc)
}
