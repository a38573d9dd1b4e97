//go:build linux

package firewall

import (
	"context"
	"net"
	"net/netip"
	"os"
	"runtime"
	"strings"
	"testing"

	"github.com/google/nftables"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/errdefs"
)

func TestNewInvalid(t *testing.T) {
	ctx := context.Background()
	for _, name := range []string{"", "has space", "dot.name", "slash/", strings.Repeat("a", 33), "ü"} {
		_, err := New(ctx, 3, name)
		require.ErrorIs(t, err, errdefs.ErrInvalid, "name %q", name)
		assert.ErrorContains(t, err, "firewall name")
	}
	for _, fd := range []int{-1, 0} {
		_, err := New(ctx, fd, "cnm")
		require.ErrorIs(t, err, errdefs.ErrInvalid, "fd %d", fd)
		assert.ErrorContains(t, err, "namespace fd")
	}

	// An fd that is not a network namespace.
	file, err := os.Open("/dev/null")
	require.NoError(t, err)
	defer file.Close()
	_, err = New(ctx, int(file.Fd()), "cnm")
	require.ErrorIs(t, err, errdefs.ErrInvalid)
	assert.ErrorContains(t, err, "not a network namespace")
}

func TestNewCreatesTables(t *testing.T) {
	t.Parallel()
	fd := newNS(t)
	f := openFirewall(t, fd)
	checkGolden(t, "empty", dump(t, fd, "cnm"))
	n, err := f.RuleCount(context.Background())
	require.NoError(t, err)
	assert.Zero(t, n)

	// Nothing happened in the test's own namespace.
	c, err := nftables.New()
	require.NoError(t, err)
	tables, err := c.ListTables()
	require.NoError(t, err)
	for _, tb := range tables {
		assert.NotEqual(t, "cnm", tb.Name, "table in the caller's namespace")
	}
}

// TestNewIdempotent opens a second Firewall on an existing table, as a
// restarted controller would: rules stay, forward keeps exactly its jumps,
// and the new instance can remove what the old one added.
func TestNewIdempotent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f1 := openFirewall(t, fd)
	require.NoError(t, f1.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24")))
	before := dump(t, fd, "cnm")

	f2, err := New(ctx, fd, "cnm")
	require.NoError(t, err)
	defer f2.Close()
	assert.Equal(t, before, dump(t, fd, "cnm"))

	// The restarted instance sees the network.
	err = f2.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24"))
	require.ErrorIs(t, err, errdefs.ErrExists)
	require.NoError(t, f2.RemoveNetwork(ctx, "n1"))
	n, err := f1.RuleCount(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
	checkGolden(t, "empty", dump(t, fd, "cnm"))
}

// TestNewRepairs checks that New restores chains and jumps removed behind its
// back.
func TestNewRepairs(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	c.FlushChain(f.forward)
	c.DelChain(f.postrouting)
	require.NoError(t, c.Flush())

	f2, err := New(ctx, fd, "cnm")
	require.NoError(t, err)
	require.NoError(t, f2.Close())
	checkGolden(t, "empty", dump(t, fd, "cnm"))
}

func TestCloseAndDelete(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f, err := New(ctx, fd, "cnm-1234")
	require.NoError(t, err)
	require.NoError(t, f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24")))

	require.NoError(t, f.Delete(ctx))
	require.NoError(t, f.Delete(ctx), "second Delete")
	assertNoTables(t, fd)
	n, err := f.RuleCount(ctx)
	require.NoError(t, err)
	assert.Zero(t, n)
	require.NoError(t, f.RemoveNetwork(ctx, "n1"))
	require.ErrorIs(t, f.AddNetwork(ctx, testNetwork("n2", "br-b", "198.18.2.0/24")), errdefs.ErrNotFound)
	assertNoTables(t, fd)

	require.NoError(t, f.Close())
	require.NoError(t, f.Close(), "second Close")
	require.ErrorIs(t, f.AddNetwork(ctx, testNetwork("n2", "br-b", "198.18.2.0/24")), net.ErrClosed)
	require.ErrorIs(t, f.RemoveNetwork(ctx, "n2"), net.ErrClosed)
	require.ErrorIs(t, f.Delete(ctx), net.ErrClosed)
	_, err = f.RuleCount(ctx)
	require.ErrorIs(t, err, net.ErrClosed)
}

// TestCloseKeepsRules checks that rules outlive the Firewall that made them.
func TestCloseKeepsRules(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f, err := New(ctx, fd, "cnm")
	require.NoError(t, err)
	require.NoError(t, f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24")))
	before := dump(t, fd, "cnm")
	require.NoError(t, f.Close())
	assert.Equal(t, before, dump(t, fd, "cnm"))

	f = openFirewall(t, fd) // deletes the tables at the end
	require.NoError(t, f.RemoveNetwork(ctx, "n1"))
}

// TestNewCallerKeepsNamespace checks that New does not move the calling
// thread into the firewall's namespace.
func TestNewCallerKeepsNamespace(t *testing.T) {
	t.Parallel()
	fd := newNS(t)
	var before, after unix.Stat_t
	ch := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		if err := unix.Stat("/proc/thread-self/ns/net", &before); err != nil {
			ch <- err
			return
		}
		f, err := New(context.Background(), fd, "cnm")
		if err != nil {
			ch <- err
			return
		}
		defer f.Close()
		if err := f.Delete(context.Background()); err != nil {
			ch <- err
			return
		}
		ch <- unix.Stat("/proc/thread-self/ns/net", &after)
	}()
	require.NoError(t, <-ch)
	assert.Equal(t, before.Ino, after.Ino, "calling thread changed network namespace")
}

func testNetwork(id, bridge string, subnets ...string) Network {
	n := Network{ID: id, Bridge: bridge, Masquerade: true, ICC: true}
	for _, s := range subnets {
		n.Subnets = append(n.Subnets, netip.MustParsePrefix(s))
	}
	return n
}
