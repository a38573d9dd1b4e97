//go:build linux

package firewall

import (
	"context"
	"testing"

	"github.com/google/nftables"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
)

// TestRebuild: after a flush of the whole ruleset, or a deleted chain, a
// Rebuild with the same networks and ports gives the very same table; bad
// input changes nothing.
func TestRebuild(t *testing.T) {
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	a, b := networks()
	require.NoError(t, f.AddNetwork(ctx, a))
	require.NoError(t, f.AddNetwork(ctx, b))
	ports := manyPorts("A", "brA", 20, 10000)
	require.NoError(t, f.AddPorts(ctx, ports...))
	want := dump(t, fd, "cnm")

	other, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	other.FlushRuleset()
	require.NoError(t, other.Flush())
	assertNoTables(t, fd)
	require.NoError(t, f.Rebuild(ctx, []Network{a, b}, ports))
	require.Equal(t, want, dump(t, fd, "cnm"))

	other.DelChain(&nftables.Chain{Name: chainIsolate, Table: f.table})
	other.FlushChain(&nftables.Chain{Name: chainForward, Table: f.table})
	require.Error(t, other.Flush(), "a chain still jumped to cannot be deleted")
	other.FlushChain(&nftables.Chain{Name: chainPostrouting, Table: f.table})
	require.NoError(t, other.Flush())
	require.NotEqual(t, want, dump(t, fd, "cnm"))
	require.NoError(t, f.Rebuild(ctx, []Network{a, b}, ports))
	require.Equal(t, want, dump(t, fd, "cnm"), "an intact table rebuilds to itself")
	require.NoError(t, f.Rebuild(ctx, []Network{a, b}, ports))
	require.Equal(t, want, dump(t, fd, "cnm"))

	bad := a
	bad.Bridge = "brB"
	require.ErrorIs(t, f.Rebuild(ctx, []Network{bad, b}, nil), errdefs.ErrInvalid)
	require.ErrorIs(t, f.Rebuild(ctx, []Network{{ID: "x y"}}, nil), errdefs.ErrInvalid)
	require.Equal(t, want, dump(t, fd, "cnm"), "bad input changes nothing")
	require.NoError(t, f.SetPorts(ctx))
	require.NoError(t, f.RemoveNetwork(ctx, "A"))
	require.NoError(t, f.RemoveNetwork(ctx, "B"))
}
