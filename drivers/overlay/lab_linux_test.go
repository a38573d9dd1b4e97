package overlay

import (
	"context"
	"testing"

	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/driverapi"
)

// testLab is the set-up the two-host tests share: two hosts (newHosts) with
// one overlay network, nid, created on both. pair joins an endpoint on
// each host and peers them; finish takes it all down again and checks
// that nothing is left. Tests use h1 and h2 directly for everything else
// (h.d is replaced by restart, so there is no copy of the drivers here).
type testLab struct {
	h1, h2 *testHost
	nid    string
}

// epSpec is an endpoint to join: its ID, its address with prefix length,
// and its MAC.
type epSpec struct {
	id, ip, mac string
}

// newLab makes two hosts whose underlay link has MTU ulMTU and creates
// network req on both.
func newLab(t testing.TB, ulMTU int, req driverapi.NetworkRequest) *testLab {
	t.Helper()
	h1, h2 := newHosts(t, ulMTU)
	for _, h := range []*testHost{h1, h2} {
		require.NoError(t, h.d.CreateNetwork(context.Background(), req))
	}
	return &testLab{h1: h1, h2: h2, nid: req.ID}
}

// pair joins endpoint a on h1 and b on h2 to the network (join), and adds
// each as a peer on the other host, as the control plane would: a and b
// then reach each other over VXLAN.
func (l *testLab) pair(t testing.TB, a, b epSpec) (*testEP, *testEP) {
	t.Helper()
	ctx := context.Background()
	ep1 := join(t, l.h1, l.nid, a.id, a.ip, a.mac)
	ep2 := join(t, l.h2, l.nid, b.id, b.ip, b.mac)
	require.NoError(t, l.h1.d.AddPeer(ctx, ep2.peer()))
	require.NoError(t, l.h2.d.AddPeer(ctx, ep1.peer()))
	return ep1, ep2
}

// finish leaves eps in the order given (leave, which checks each sandbox
// is empty), then deletes the network on both hosts and checks that
// neither holds anything of the driver's (assertClean).
func (l *testLab) finish(t testing.TB, eps ...*testEP) {
	t.Helper()
	for _, ep := range eps {
		ep.leave(t)
	}
	for _, h := range []*testHost{l.h1, l.h2} {
		require.NoError(t, h.d.DeleteNetwork(context.Background(), l.nid))
		assertClean(t, h)
	}
}
