package server_test

import (
	"context"
	"net/http"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/drivers/bridge"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin/protocol"
	"github.com/seed53641549/cnm/plugin/server"
	"github.com/seed53641549/cnm/store"
)

// bridgeServer is cnm's bridge driver and IPAM served with a store, as
// cmd/cnm-docker-plugin serves them.
type bridgeServer struct {
	*server.Server
	fw *firewall.Firewall
	st *store.Bolt
}

func startBridgeServer(t *testing.T, host *cnmtest.HostNS, owner mark.Owner, dir string, wrap ...func(*server.Config)) *bridgeServer {
	t.Helper()
	ctx := context.Background()
	fw, err := firewall.New(ctx, host.FD(t), owner.Table())
	require.NoError(t, err)
	drv, err := bridge.New(bridge.Config{HostNS: host.NS, Firewall: fw, Owner: owner})
	require.NoError(t, err)
	alloc, err := ipam.New(ipam.Config{})
	require.NoError(t, err)
	st, err := store.Open(dir)
	require.NoError(t, err)
	cfg := server.Config{Driver: drv, Allocator: alloc, HostNS: host.NS, Store: st}
	for _, w := range wrap {
		w(&cfg)
	}
	s, err := server.New(ctx, cfg)
	require.NoError(t, err)
	return &bridgeServer{Server: s, fw: fw, st: st}
}

// crash drops the server as a killed process would: nothing is cleaned.
func (b *bridgeServer) crash() {
	b.fw.Close()
	b.st.Close()
}

func ok(t *testing.T, s http.Handler, path, body string) map[string]any {
	t.Helper()
	code, out := call(t, s, http.MethodPost, path, body)
	require.Equal(t, http.StatusOK, code, "%s %s: %v", path, body, out)
	return out
}

// TestServerRestoresAfterCrash: a server killed with a network, a joined
// endpoint (its interface in a container's namespace), another endpoint and
// an IPAM pool is made again on the same store; it takes everything back,
// the container's interface untouched, under the IDs the daemon knows, and
// the daemon can then undo it all, leaving nothing.
func TestServerRestoresAfterCrash(t *testing.T) {
	ctx := context.Background()
	host := cnmtest.NewHostNS(t)
	ctr, err := osl.NewNamespace(ctx, filepath.Join(t.TempDir(), "container"))
	require.NoError(t, err)
	t.Cleanup(func() { ctr.Delete() })
	owner := mark.NewOwner()
	dir := t.TempDir()

	s := startBridgeServer(t, host, owner, dir)
	pool := ok(t, s, protocol.PathRequestPool, `{"AddressSpace":"local","Pool":"10.160.0.0/24"}`)["PoolID"].(string)
	ok(t, s, protocol.PathRequestAddress, `{"PoolID":"`+pool+`","Address":"10.160.0.1"}`)
	assert.Equal(t, "10.160.0.2/24", ok(t, s, protocol.PathRequestAddress, `{"PoolID":"`+pool+`"}`)["Address"])
	ok(t, s, protocol.PathCreateNetwork, `{"NetworkID":"net1","Options":{"com.docker.network.generic":{"com.docker.network.bridge.name":"br-crash"}},
		"IPv4Data":[{"AddressSpace":"local","Pool":"10.160.0.0/24","Gateway":"10.160.0.1/24"}]}`)
	mac := ok(t, s, protocol.PathCreateEndpoint, `{"NetworkID":"net1","EndpointID":"ep1","Interface":{"Address":"10.160.0.2/24"}}`)["Interface"].(map[string]any)["MacAddress"].(string)
	ok(t, s, protocol.PathCreateEndpoint, `{"NetworkID":"net1","EndpointID":"ep2","Interface":{"Address":"10.160.0.3/24","MacAddress":"02:42:0a:a0:00:03"}}`)
	join := ok(t, s, protocol.PathJoin, `{"NetworkID":"net1","EndpointID":"ep1","SandboxKey":"`+ctr.Path()+`"}`)
	src := join["InterfaceName"].(map[string]any)["SrcName"].(string)
	assert.Equal(t, "10.160.0.1", join["Gateway"])
	// What the daemon does: move the interface into the container as eth0.
	require.NoError(t, host.NS.MoveLink(ctx, src, ctr, "eth0"))
	eth0, err := ctr.LinkByName(ctx, "eth0")
	require.NoError(t, err)
	assert.Equal(t, mac, eth0.MAC.String())

	s.crash()
	s = startBridgeServer(t, host, owner, dir)
	t.Cleanup(func() { s.fw.Delete(context.Background()); s.crash() })

	after, err := ctr.LinkByName(ctx, "eth0")
	require.NoError(t, err, "the container's interface survived the restore")
	assert.Equal(t, eth0.Index, after.Index)
	hostEnd, err := host.NS.LinkByIndex(ctx, eth0.PeerIndex)
	require.NoError(t, err, "its host end too")
	br, err := host.NS.LinkByName(ctx, "br-crash")
	require.NoError(t, err)
	assert.Equal(t, br.Index, hostEnd.MasterIndex)
	rules, err := s.fw.RuleCount(ctx)
	require.NoError(t, err)
	assert.Positive(t, rules)

	// The pool under the daemon's ID, its addresses still held.
	assert.Equal(t, "10.160.0.3/24", ok(t, s, protocol.PathRequestAddress, `{"PoolID":"`+pool+`"}`)["Address"])
	ok(t, s, protocol.PathReleaseAddress, `{"PoolID":"`+pool+`","Address":"10.160.0.3"}`)
	code, _ := call(t, s, http.MethodPost, protocol.PathCreateEndpoint, `{"NetworkID":"net1","EndpointID":"ep2"}`)
	assert.Equal(t, http.StatusInternalServerError, code, "ep2 is known again")

	// The daemon undoes everything: leave (it moves the interface back
	// first), delete, release.
	require.NoError(t, ctr.MoveLink(ctx, "eth0", host.NS, src))
	ok(t, s, protocol.PathLeave, `{"NetworkID":"net1","EndpointID":"ep1"}`)
	ok(t, s, protocol.PathDeleteEndpoint, `{"NetworkID":"net1","EndpointID":"ep1"}`)
	ok(t, s, protocol.PathDeleteEndpoint, `{"NetworkID":"net1","EndpointID":"ep2"}`)
	ok(t, s, protocol.PathDeleteNetwork, `{"NetworkID":"net1"}`)
	ok(t, s, protocol.PathReleaseAddress, `{"PoolID":"`+pool+`","Address":"10.160.0.2"}`)
	ok(t, s, protocol.PathReleasePool, `{"PoolID":"`+pool+`"}`)
	cnmtest.AssertNoLeaks(t, host)

	kvs, err := s.st.List(ctx, "plugin/")
	require.NoError(t, err)
	assert.Empty(t, kvs, "no record left")

	// And a third start on the empty state is clean.
	s.crash()
	s = startBridgeServer(t, host, owner, dir)
}
