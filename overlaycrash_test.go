//go:build linux

package cnm_test

import (
	"context"
	"net/netip"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
	etcdstore "github.com/seed53641549/cnm/store/etcd"
)

// overlayCrashSteps are the steps at which TestOverlayCrashRecovery kills
// the child: every step of an overlay network's create, endpoint, join (the
// gateway bridge's too), leave and delete that touches etcd or the kernel.
var overlayCrashSteps = []string{
	"network:driver", "network:global", "network:commit",
	"endpoint:driver", "endpoint:global", "endpoint:commit",
	"join:driver", "join:interface", "join:gateway", "join:dns", "join:commit",
	"leave:recorded",
	"sandbox-delete:namespace",
	"network-delete:driver", "network-delete:recorded",
}

// TestOverlayCrashChild is the child of TestOverlayCrashRecovery: host 1
// of a cluster, it makes an overlay network, a container on it, joins,
// leaves, joins, deletes both, and kills itself with SIGKILL at the step
// named in CNM_OVCRASH_STEP.
func TestOverlayCrashChild(t *testing.T) {
	step := os.Getenv("CNM_OVCRASH_STEP")
	if step == "" {
		t.Skip("run by TestOverlayCrashRecovery")
	}
	host := &cnmtest.HostNS{Path: os.Getenv("CNM_OVCRASH_HOSTNS"), RunDir: os.Getenv("CNM_OVCRASH_RUNDIR"), DataDir: os.Getenv("CNM_OVCRASH_DATADIR")}
	opts := append(host.Options(), cnmtest.GlobalOptions([]string{os.Getenv("CNM_OVCRASH_ETCD")}, os.Getenv("CNM_OVCRASH_PREFIX"),
		2*time.Second, netip.MustParseAddr(os.Getenv("CNM_OVCRASH_VTEP")))...)
	ctrl, err := cnm.New(opts...)
	require.NoError(t, err)
	killAt(ctrl, step)
	crashScenario(t, ctrl, step, "overlay", "ov", []cnm.NetworkOption{ipv4Subnet("10.93.0.0/24")})
}

// TestOverlayCrashRecovery kills host 1's controller process (SIGKILL) at
// each step of TestOverlayCrashChild's scenario, starts it again on the
// same data dir, and checks that the cluster is coherent: both hosts have
// the same overlay networks, the peer table holds exactly host 1's
// endpoints, a joined container is reached from host 2, and once
// everything is deleted through the API nothing is left in etcd (no
// network, name, endpoint, address block, pool or VXLAN ID) nor in host
// 1's kernel.
func TestOverlayCrashRecovery(t *testing.T) {
	t.Parallel()
	cnmtest.SkipUnlessRoot(t)
	for _, step := range overlayCrashSteps {
		t.Run(step, func(t *testing.T) {
			ctx := context.Background()
			prefix := "crash-" + strings.ReplaceAll(step, ":", "-")
			cl := cnmtest.NewCluster(t, 2, cnmtest.ClusterOptions{Prefix: prefix})
			h1, h2 := cl.Hosts[0], cl.Hosts[1]
			kv, err := etcdstore.Open(ctx, etcdstore.Config{Endpoints: cl.Etcd.Endpoints(), Prefix: prefix + "/"})
			require.NoError(t, err)
			defer kv.Close()
			baseline := globalKeys(t, kv)

			h1.Kill(t) // the child is host 1 now
			runCrashChild(t, "TestOverlayCrashChild", step, "CNM_OVCRASH_STEP="+step,
				"CNM_OVCRASH_HOSTNS="+h1.Path, "CNM_OVCRASH_RUNDIR="+h1.RunDir, "CNM_OVCRASH_DATADIR="+h1.DataDir,
				"CNM_OVCRASH_ETCD="+cl.Etcd.Endpoints()[0], "CNM_OVCRASH_PREFIX="+prefix, "CNM_OVCRASH_VTEP="+h1.VTEP.String())

			h1.Start(t)
			c1, c2 := h1.Ctrl, h2.Ctrl
			overlays := func(c *cnm.Controller) []string {
				var ids []string
				for _, n := range c.Networks() {
					if n.Type() == "overlay" {
						ids = append(ids, n.ID())
					}
				}
				slices.Sort(ids)
				return ids
			}
			require.Eventually(t, func() bool { return slices.Equal(overlays(c1), overlays(c2)) }, 5*time.Second, 10*time.Millisecond,
				"overlay networks: host 1 %v, host 2 %v", overlays(c1), overlays(c2))
			var want []string // host 1's endpoints, as the peer table must hold them
			for _, id := range overlays(c1) {
				n, err := c1.NetworkByID(id)
				require.NoError(t, err)
				for _, ep := range n.Endpoints() {
					want = append(want, "endpoints/"+id+"/"+ep.ID())
				}
			}
			slices.Sort(want)
			require.Eventually(t, func() bool { return slices.Equal(want, keysUnder(t, kv, "endpoints/")) }, 5*time.Second, 10*time.Millisecond,
				"peer table %v, want host 1's endpoints %v", keysUnder(t, kv, "endpoints/"), want)

			// A container that is joined is reached from host 2.
			for _, id := range overlays(c1) {
				n, err := c1.NetworkByID(id)
				require.NoError(t, err)
				for _, ep := range n.Endpoints() {
					sbID := ep.Info().SandboxID
					if sbID == "" {
						continue
					}
					sb, err := c1.SandboxByID(sbID)
					require.NoError(t, err)
					c := ovContainer{sb: sb, ep: ep, addr: ep.Info().IPv4.Addr()}
					echoServer(t, c)
					probe := ovRun(t, h2, n.Name(), "probe")
					requireReach(t, probe, c)
					require.NoError(t, probe.sb.Delete(ctx)) // and its endpoint
				}
			}

			// Everything deleted through the API leaves nothing behind.
			deleteAll(t, c1)
			require.NoError(t, c1.Settle(ctx))
			require.NoError(t, c2.Settle(ctx))
			require.Eventually(t, func() bool { return slices.Equal(baseline, globalKeys(t, kv)) }, 5*time.Second, 10*time.Millisecond,
				"etcd keys left: %v, before: %v", globalKeys(t, kv), baseline)
			cnmtest.AssertNoLeaks(t, h1.HostNS, "ul0")
		})
	}
}

// globalKeys lists the keys of the cluster's global store, sorted, but
// the VXLAN ID blocks: a host keeps its block, even empty, until its lease
// ends or its next New (as it keeps address blocks while their pool
// lives); the IDs themselves are keys of their own (vxlan/ids/).
func globalKeys(t *testing.T, kv *etcdstore.Store) []string {
	t.Helper()
	return slices.DeleteFunc(keysUnder(t, kv, ""), func(k string) bool { return strings.HasPrefix(k, "vxlan/blocks/") })
}

// keysUnder lists the keys under prefix, sorted.
func keysUnder(t *testing.T, kv *etcdstore.Store, prefix string) []string {
	t.Helper()
	kvs, _, err := kv.Snapshot(context.Background(), prefix)
	require.NoError(t, err)
	keys := []string{}
	for _, e := range kvs {
		keys = append(keys, e.Key)
	}
	slices.Sort(keys)
	return keys
}
