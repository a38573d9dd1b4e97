package overlay

import (
	"context"
	"net/netip"
	"os"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestIdleTimeout: with Config.IdleTimeout, a network's namespace outlives
// the leave of its last endpoint for that long, a join meanwhile takes the
// same namespace (and its peers) back, and DeleteNetwork drops it at once.
func TestIdleTimeout(t *testing.T) {
	ctx := context.Background()
	req := testNet("1d1e1d1e1d1e1d1e", 4400, "10.72.0.0/24")
	lab := newLab(t, 1500, req)
	h1, h2 := lab.h1, lab.h2
	// Read when a network's last endpoint leaves; long enough that the
	// join below comes within it even on a loaded machine.
	h1.d.cfg.IdleTimeout = 2 * time.Second
	path := h1.d.sandboxPath(req.ID)
	inode := func() uint64 {
		var st unix.Stat_t
		require.NoError(t, unix.Stat(path, &st))
		return st.Ino
	}

	a, b := lab.pair(t, epSpec{"a", "10.72.0.2/24", "02:42:0a:48:00:02"}, epSpec{"b", "10.72.0.3/24", "02:42:0a:48:00:03"})
	serve(t, b.sb, 7000, "b")
	first := inode()
	a.leave(t)
	_, err := os.Stat(path)
	require.NoError(t, err, "the namespace outlives its last leave")

	// A join within the timeout takes it back, peers and all.
	a2 := join(t, h1, req.ID, "a2", "10.72.0.4/24", "02:42:0a:48:00:04")
	require.NoError(t, h2.d.AddPeer(ctx, a2.peer()))
	assert.Equal(t, first, inode(), "the same namespace")
	got, err := ask(a2.sb, netip.MustParseAddrPort("10.72.0.3:7000"), 3*time.Second) // SYN retried after 1 s: a fresh veth may drop the first
	require.NoError(t, err)
	assert.Equal(t, "b", got)
	time.Sleep(500 * time.Millisecond)
	_, err = os.Stat(path)
	require.NoError(t, err, "a joined network's namespace stays")

	// Idle past the timeout: dropped.
	a2.leave(t)
	require.Eventually(t, func() bool { _, err := os.Stat(path); return os.IsNotExist(err) }, 6*time.Second, 10*time.Millisecond)

	// Idle, then deleted: dropped at once.
	a3 := join(t, h1, req.ID, "a3", "10.72.0.5/24", "02:42:0a:48:00:05")
	a3.leave(t)
	require.NoError(t, h1.d.DeleteNetwork(ctx, req.ID))
	_, err = os.Stat(path)
	require.True(t, os.IsNotExist(err), "DeleteNetwork drops an idle namespace at once")
	b.leave(t)
	require.NoError(t, h2.d.DeleteNetwork(ctx, req.ID))
	assertClean(t, h1)
	assertClean(t, h2)
}
