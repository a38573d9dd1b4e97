package server_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin/protocol"
	"github.com/seed53641549/cnm/plugin/server"
	"github.com/seed53641549/cnm/store"
)

// This file holds the store fault sweep of the plugin server: every request
// that records something is made to fail at each of its store writes, on a
// server serving cnm's bridge driver and IPAM over a real bolt store in a
// throwaway host namespace. After each failure the request must have
// answered with the protocol's error, and nothing of it may be left: no link,
// no firewall rule, no address or pool held, no record; a retry must then
// get what a run without faults got, and a server made again on the same
// store must take back exactly the state from before the request.

// errStoreFault is the error the sweep injects into store writes.
var errStoreFault = errors.New("store fault sweep: injected write failure")

// faultStore is a store whose Nth write (Txn or CompareAndSwap) after arm
// fails with errStoreFault, writing nothing; reads always pass.
type faultStore struct {
	store.Store

	mu     sync.Mutex
	writes int // writes since arm
	failAt int // 0: fail none
	fired  bool
}

// arm makes the nth write from now fail (0: none) and counts from zero.
func (f *faultStore) arm(n int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes, f.failAt, f.fired = 0, n, false
}

// disarm stops injecting and returns the writes counted since arm and
// whether the fault fired.
func (f *faultStore) disarm() (writes int, fired bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	writes, fired = f.writes, f.fired
	f.failAt = 0
	return writes, fired
}

func (f *faultStore) write() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.writes++
	if f.failAt > 0 && f.writes == f.failAt {
		f.fired = true
		return errStoreFault
	}
	return nil
}

func (f *faultStore) Txn(ctx context.Context, ops ...store.Op) error {
	if err := f.write(); err != nil {
		return err
	}
	return f.Store.Txn(ctx, ops...)
}

func (f *faultStore) CompareAndSwap(ctx context.Context, key string, rev uint64, value []byte) (uint64, error) {
	if err := f.write(); err != nil {
		return 0, err
	}
	return f.Store.CompareAndSwap(ctx, key, rev, value)
}

// errAllocFault is the error a flakyAllocator injects.
var errAllocFault = errors.New("store fault sweep: injected allocator failure")

// flakyAllocator is an allocator whose ReleasePool fails while failRelease
// is set.
type flakyAllocator struct {
	ipam.Allocator
	failRelease atomic.Bool
}

func (a *flakyAllocator) ReleasePool(ctx context.Context, poolID string) error {
	if a.failRelease.Load() {
		return errAllocFault
	}
	return a.Allocator.ReleasePool(ctx, poolID)
}

// rbEnv is one run of the sweep: a host namespace, a container namespace
// for joins, and a bridge server on a bolt store in dir, its writes going
// through fault.
type rbEnv struct {
	t      *testing.T
	host   *cnmtest.HostNS
	hostFD int
	ctr    *osl.Namespace
	owner  mark.Owner
	dir    string
	s      *bridgeServer
	fault  *faultStore
	alloc  *flakyAllocator

	pool string         // the PoolID a setup requested
	src  string         // the host-side interface name of a setup's join
	ans  map[string]any // the answer of the swept request (or of its retry)
}

func newRBEnv(t *testing.T) *rbEnv {
	t.Helper()
	host := cnmtest.NewHostNS(t)
	ctr, err := osl.NewNamespace(context.Background(), filepath.Join(t.TempDir(), "container"))
	require.NoError(t, err)
	t.Cleanup(func() { ctr.Delete() })
	e := &rbEnv{t: t, host: host, hostFD: host.FD(t), ctr: ctr, owner: mark.NewOwner(), dir: t.TempDir()}
	e.start()
	t.Cleanup(func() {
		if e.s != nil {
			e.s.fw.Delete(context.Background())
			e.s.crash()
		}
	})
	return e
}

// start makes the server on the env's store, as startBridgeServer does, with
// the store wrapped in a faultStore.
func (e *rbEnv) start() {
	e.t.Helper()
	e.s = startBridgeServer(e.t, e.host, e.owner, e.dir, func(c *server.Config) {
		e.fault = &faultStore{Store: c.Store}
		e.alloc = &flakyAllocator{Allocator: c.Allocator}
		c.Store, c.Allocator = e.fault, e.alloc
	})
}

// reopen drops the server as a crash would and makes it again on the same
// store file.
func (e *rbEnv) reopen() {
	e.s.crash()
	e.s = nil
	e.start()
}

func (e *rbEnv) ok(path, body string) map[string]any {
	e.t.Helper()
	return ok(e.t, e.s, path, body)
}

// rbState is what the sweep compares before and after a failed request.
type rbState struct {
	Links   []string          // "name kind master" of every host link
	Rules   int               // firewall.CountRules of the owner's table
	FwNets  []string          // the firewall's networks
	Records map[string]string // the server's records, by key
}

func (e *rbEnv) state() rbState {
	t := e.t
	t.Helper()
	ctx := context.Background()
	var st rbState
	links, err := e.host.NS.Links(ctx)
	require.NoError(t, err)
	names := map[int]string{}
	for _, l := range links {
		names[l.Index] = l.Name
	}
	for _, l := range links {
		st.Links = append(st.Links, fmt.Sprintf("%s %s master=%s", l.Name, l.Kind, names[l.MasterIndex]))
	}
	slices.Sort(st.Links)
	st.Rules, err = firewall.CountRules(ctx, e.hostFD, e.owner.Table())
	require.NoError(t, err)
	st.FwNets, err = e.s.fw.NetworkIDs(ctx)
	require.NoError(t, err)
	slices.Sort(st.FwNets)
	kvs, err := e.s.st.List(ctx, "plugin/")
	require.NoError(t, err)
	st.Records = map[string]string{}
	for _, kv := range kvs {
		st.Records[kv.Key] = string(kv.Value)
	}
	return st
}

// assertState asserts that the env is in state want, waiting a little for
// the kernel in case a link removal is asynchronous.
func (e *rbEnv) assertState(want rbState, msg string) {
	e.t.Helper()
	var got rbState
	for deadline := time.Now().Add(5 * time.Second); ; time.Sleep(20 * time.Millisecond) {
		got = e.state()
		if assert.ObjectsAreEqual(want, got) || time.Now().After(deadline) {
			break
		}
	}
	assert.Equal(e.t, want, got, msg)
}

// assertClean asserts that the env holds nothing any more: no link, rule or
// record.
func (e *rbEnv) assertClean() {
	e.t.Helper()
	cnmtest.AssertNoLeaks(e.t, e.host)
	kvs, err := e.s.st.List(context.Background(), "plugin/")
	require.NoError(e.t, err)
	assert.Empty(e.t, kvs, "no record left")
}

// Setup and teardown steps the scenarios share.
const (
	rbNetwork = `{"NetworkID":"net1","Options":{"com.docker.network.generic":{"com.docker.network.bridge.name":"br-rb"}},
		"IPv4Data":[{"AddressSpace":"local","Pool":"10.170.0.0/24","Gateway":"10.170.0.1/24"}]}`
	rbEndpoint = `{"NetworkID":"net1","EndpointID":"ep1","Interface":{"Address":"10.170.0.2/24","MacAddress":"02:42:0a:aa:00:02"}}`
	rbEP       = `{"NetworkID":"net1","EndpointID":"ep1"}`
	rbNet      = `{"NetworkID":"net1"}`
)

func (e *rbEnv) mkNetwork()  { e.ok(protocol.PathCreateNetwork, rbNetwork) }
func (e *rbEnv) mkEndpoint() { e.mkNetwork(); e.ok(protocol.PathCreateEndpoint, rbEndpoint) }

// mkJoined joins ep1 to the container as the daemon does: Join, then the
// interface moved into the container as eth0; and, as the daemon does
// before a Leave, moved back under its name.
func (e *rbEnv) mkJoined(moveBack bool) {
	e.mkEndpoint()
	e.src = e.ok(protocol.PathJoin, e.joinBody())["InterfaceName"].(map[string]any)["SrcName"].(string)
	ctx := context.Background()
	require.NoError(e.t, e.host.NS.MoveLink(ctx, e.src, e.ctr, "eth0"))
	if moveBack {
		require.NoError(e.t, e.ctr.MoveLink(ctx, "eth0", e.host.NS, e.src))
	}
}

func (e *rbEnv) joinBody() string {
	return `{"NetworkID":"net1","EndpointID":"ep1","SandboxKey":"` + e.ctr.Path() + `"}`
}

func (e *rbEnv) mkPool() {
	e.pool = e.ok(protocol.PathRequestPool, `{"AddressSpace":"local","Pool":"10.171.0.0/24"}`)["PoolID"].(string)
	e.ok(protocol.PathRequestAddress, `{"PoolID":"`+e.pool+`","Address":"10.171.0.1","Options":{"RequestAddressType":"com.docker.network.gateway"}}`)
}

func (e *rbEnv) addrBody(addr string) string {
	if addr == "" {
		return `{"PoolID":"` + e.pool + `"}`
	}
	return `{"PoolID":"` + e.pool + `","Address":"` + addr + `"}`
}

func (e *rbEnv) rmPool(addrs ...string) {
	for _, a := range append(addrs, "10.171.0.1") {
		e.ok(protocol.PathReleaseAddress, e.addrBody(a))
	}
	e.ok(protocol.PathReleasePool, `{"PoolID":"`+e.pool+`"}`)
}

// addrOf is the address, without its length, of a RequestAddress answer.
func addrOf(ans map[string]any) string {
	a, _, _ := strings.Cut(ans["Address"].(string), "/")
	return a
}

// rbScenario is one request of the sweep.
type rbScenario struct {
	name  string
	setup func(e *rbEnv)
	// request returns the swept call.
	request func(e *rbEnv) (path, body string)
	// same names the answer's fields a retry must give as a run without
	// faults did.
	same []string
	// afterFail, when set, turns the state before the request into the one
	// a failed request leaves (default: the same).
	afterFail func(before rbState) rbState
	// check, when set, asserts more after the failure (and after a reopen),
	// before the retry; it must leave the state as it found it.
	check func(e *rbEnv)
	// retried, when set, asserts more after a successful retry; dry is the
	// answer of the run without faults.
	retried func(e *rbEnv, dry map[string]any)
	// teardown undoes setup and the request, through the protocol.
	teardown func(e *rbEnv)
}

func rbScenarios() []rbScenario {
	return []rbScenario{{
		name:     "CreateNetwork",
		setup:    func(*rbEnv) {},
		request:  func(*rbEnv) (string, string) { return protocol.PathCreateNetwork, rbNetwork },
		teardown: func(e *rbEnv) { e.ok(protocol.PathDeleteNetwork, rbNet) },
	}, {
		name:    "CreateEndpoint",
		setup:   (*rbEnv).mkNetwork,
		request: func(*rbEnv) (string, string) { return protocol.PathCreateEndpoint, rbEndpoint },
		teardown: func(e *rbEnv) {
			e.ok(protocol.PathDeleteEndpoint, rbEP)
			e.ok(protocol.PathDeleteNetwork, rbNet)
		},
	}, {
		name:    "Join",
		setup:   (*rbEnv).mkEndpoint,
		request: func(e *rbEnv) (string, string) { return protocol.PathJoin, e.joinBody() },
		same:    []string{"InterfaceName", "Gateway"},
		check: func(e *rbEnv) {
			info := e.ok(protocol.PathEndpointOperInfo, rbEP)["Value"].(map[string]any)
			assert.NotContains(e.t, info, "interface", "the endpoint is not joined")
		},
		teardown: func(e *rbEnv) {
			e.ok(protocol.PathLeave, rbEP)
			e.ok(protocol.PathDeleteEndpoint, rbEP)
			e.ok(protocol.PathDeleteNetwork, rbNet)
		},
	}, {
		// A Leave is not undone: the daemon has already taken the
		// interface back, and the driver deleted it. What the record
		// still says (joined) is finished by a retry, or by the next
		// restore, which finds no interface in the container.
		name:    "Leave",
		setup:   func(e *rbEnv) { e.mkJoined(true) },
		request: func(*rbEnv) (string, string) { return protocol.PathLeave, rbEP },
		afterFail: func(before rbState) rbState {
			before.Links = slices.DeleteFunc(slices.Clone(before.Links), func(l string) bool { return strings.Contains(l, " veth ") })
			return before
		},
		check: func(e *rbEnv) {
			info := e.ok(protocol.PathEndpointOperInfo, rbEP)["Value"].(map[string]any)
			assert.NotContains(e.t, info, "interface", "the endpoint is not joined any more")
		},
		teardown: func(e *rbEnv) {
			e.ok(protocol.PathDeleteEndpoint, rbEP)
			e.ok(protocol.PathDeleteNetwork, rbNet)
		},
	}, {
		name:    "DeleteEndpoint",
		setup:   func(e *rbEnv) { e.mkJoined(true); e.ok(protocol.PathLeave, rbEP) },
		request: func(*rbEnv) (string, string) { return protocol.PathDeleteEndpoint, rbEP },
		check: func(e *rbEnv) {
			code, out := call(e.t, e.s, http.MethodPost, protocol.PathDeleteNetwork, rbNet)
			assert.Equal(e.t, http.StatusInternalServerError, code, "the network still has its endpoint: %v", out)
			// And the endpoint is whole: it joins again.
			e.ok(protocol.PathJoin, e.joinBody())
			e.ok(protocol.PathLeave, rbEP)
		},
		teardown: func(e *rbEnv) { e.ok(protocol.PathDeleteNetwork, rbNet) },
	}, {
		name:    "DeleteNetwork",
		setup:   (*rbEnv).mkNetwork,
		request: func(*rbEnv) (string, string) { return protocol.PathDeleteNetwork, rbNet },
		check: func(e *rbEnv) {
			// The network is whole: an endpoint joins it.
			e.ok(protocol.PathCreateEndpoint, rbEndpoint)
			assert.Equal(e.t, "10.170.0.1", e.ok(protocol.PathJoin, e.joinBody())["Gateway"])
			e.ok(protocol.PathLeave, rbEP)
			e.ok(protocol.PathDeleteEndpoint, rbEP)
		},
		teardown: func(*rbEnv) {},
	}, {
		name:  "RequestPool",
		setup: func(*rbEnv) {},
		request: func(*rbEnv) (string, string) {
			return protocol.PathRequestPool, `{"AddressSpace":"local","Pool":"10.171.0.0/24"}`
		},
		same: []string{"Pool"},
		teardown: func(e *rbEnv) {
			e.ok(protocol.PathReleasePool, `{"PoolID":"`+e.ans["PoolID"].(string)+`"}`)
		},
	}, {
		name:    "RequestPool/default",
		setup:   func(*rbEnv) {},
		request: func(*rbEnv) (string, string) { return protocol.PathRequestPool, `{"AddressSpace":"local"}` },
		same:    []string{"Pool"},
		teardown: func(e *rbEnv) {
			e.ok(protocol.PathReleasePool, `{"PoolID":"`+e.ans["PoolID"].(string)+`"}`)
		},
	}, {
		name:     "RequestAddress",
		setup:    (*rbEnv).mkPool,
		request:  func(e *rbEnv) (string, string) { return protocol.PathRequestAddress, e.addrBody("10.171.0.5") },
		same:     []string{"Address"},
		teardown: func(e *rbEnv) { e.rmPool("10.171.0.5") },
	}, {
		// The allocator hands out addresses next-fit, and a release does
		// not move its cursor back: the retry may get the next address.
		// The one the failed request took must be free, though.
		name:    "RequestAddress/dynamic",
		setup:   (*rbEnv).mkPool,
		request: func(e *rbEnv) (string, string) { return protocol.PathRequestAddress, e.addrBody("") },
		retried: func(e *rbEnv, dry map[string]any) {
			if addrOf(e.ans) != addrOf(dry) {
				e.ok(protocol.PathRequestAddress, e.addrBody(addrOf(dry)))
				e.ok(protocol.PathReleaseAddress, e.addrBody(addrOf(dry)))
			}
		},
		teardown: func(e *rbEnv) { e.rmPool(addrOf(e.ans)) },
	}, {
		name:    "ReleaseAddress",
		setup:   func(e *rbEnv) { e.mkPool(); e.ok(protocol.PathRequestAddress, e.addrBody("10.171.0.5")) },
		request: func(e *rbEnv) (string, string) { return protocol.PathReleaseAddress, e.addrBody("10.171.0.5") },
		check: func(e *rbEnv) {
			code, out := call(e.t, e.s, http.MethodPost, protocol.PathRequestAddress, e.addrBody("10.171.0.5"))
			assert.Equal(e.t, http.StatusInternalServerError, code, "the address is still held: %v", out)
		},
		retried: func(e *rbEnv, _ map[string]any) {
			assert.Equal(e.t, "10.171.0.5/24", e.ok(protocol.PathRequestAddress, e.addrBody("10.171.0.5"))["Address"], "free after the retry")
			e.ok(protocol.PathReleaseAddress, e.addrBody("10.171.0.5"))
		},
		teardown: func(e *rbEnv) { e.rmPool() },
	}, {
		name: "ReleasePool",
		setup: func(e *rbEnv) {
			e.mkPool()
			e.ok(protocol.PathRequestAddress, e.addrBody("10.171.0.5"))
			e.ok(protocol.PathReleaseAddress, e.addrBody("10.171.0.1"))
			e.ok(protocol.PathReleaseAddress, e.addrBody("10.171.0.5"))
		},
		request: func(e *rbEnv) (string, string) { return protocol.PathReleasePool, `{"PoolID":"` + e.pool + `"}` },
		check: func(e *rbEnv) {
			code, out := call(e.t, e.s, http.MethodPost, protocol.PathRequestPool, `{"AddressSpace":"local","Pool":"10.171.0.0/24"}`)
			assert.Equal(e.t, http.StatusInternalServerError, code, "the pool is still held: %v", out)
			// And under the daemon's ID, with its addresses.
			e.ok(protocol.PathRequestAddress, e.addrBody("10.171.0.5"))
			e.ok(protocol.PathReleaseAddress, e.addrBody("10.171.0.5"))
		},
		retried: func(e *rbEnv, _ map[string]any) {
			id := e.ok(protocol.PathRequestPool, `{"AddressSpace":"local","Pool":"10.171.0.0/24"}`)["PoolID"].(string)
			e.ok(protocol.PathReleasePool, `{"PoolID":"`+id+`"}`)
		},
		teardown: func(*rbEnv) {},
	}}
}

// TestStoreFaultRollback proves, for every request of the plugin server that
// writes to its store, failed at each of its writes in turn (a bolt store
// wrapped to fail the Nth write), that:
//   - the request answers with the protocol's error (status 500, the store's
//     error in Err);
//   - nothing of it is left: the host namespace's links, the firewall's rules
//     and networks and the store's records are as before the request (a
//     Leave excepted: it cannot be undone, see its scenario);
//   - a server made again on the same store file (as after a crash) takes
//     back exactly that state;
//   - a retry, on the same server or on the one made again, succeeds with
//     the answer a run without faults got (same subnet, same address, same
//     interface), so no pool, address, endpoint or interface of the failed
//     request stayed held;
//   - the daemon can then undo everything, leaving no link, rule or record.
//
// Each scenario first runs without faults, which counts its writes; the
// sweep then fails write 1 to N.
func TestStoreFaultRollback(t *testing.T) {
	for _, sc := range rbScenarios() {
		t.Run(sc.name, func(t *testing.T) {
			t.Parallel()
			dry, writes := runRBDry(t, sc)
			require.Positive(t, writes, "the request writes to the store")
			for n := 1; n <= writes; n++ {
				for _, reopen := range []bool{false, true} {
					t.Run(fmt.Sprintf("write%d/reopen=%v", n, reopen), func(t *testing.T) {
						runRBFault(t, sc, n, reopen, dry)
					})
				}
			}
		})
	}
}

// runRBDry runs a scenario without faults and returns the request's answer
// and how many store writes it made.
func runRBDry(t *testing.T, sc rbScenario) (map[string]any, int) {
	e := newRBEnv(t)
	sc.setup(e)
	path, body := sc.request(e)
	e.fault.arm(0)
	e.ans = e.ok(path, body)
	writes, _ := e.fault.disarm()
	sc.teardown(e)
	e.assertClean()
	return e.ans, writes
}

// runRBFault runs a scenario with the request's nth store write failing,
// the server made again on its store after the failure when reopen is set.
func runRBFault(t *testing.T, sc rbScenario, n int, reopen bool, dry map[string]any) {
	e := newRBEnv(t)
	sc.setup(e)
	before := e.state()
	want := before
	if sc.afterFail != nil {
		want = sc.afterFail(before)
	}

	path, body := sc.request(e)
	e.fault.arm(n)
	code, out := call(t, e.s, http.MethodPost, path, body)
	_, fired := e.fault.disarm()
	require.True(t, fired, "write %d was reached (the run without faults made that many)", n)
	assert.Equal(t, http.StatusInternalServerError, code, "%s answered %v", path, out)
	assert.Contains(t, out["Err"], errStoreFault.Error())
	e.assertState(want, "after the failed "+path)

	if reopen {
		e.reopen()
		e.assertState(want, "after a server was made again on the store")
	}
	if sc.check != nil {
		sc.check(e)
		e.assertState(want, "after the scenario's checks")
	}

	e.ans = e.ok(path, body)
	for _, k := range sc.same {
		assert.Equal(t, dry[k], e.ans[k], "the retry's %s", k)
	}
	if sc.retried != nil {
		sc.retried(e, dry)
	}
	sc.teardown(e)
	e.assertClean()
}

// TestStoreFaultSweepCovers proves the sweep covers every call of the
// protocol that records something: a server whose store fails every write
// refuses exactly the scenarios' calls (a call it does not refuse writes
// nothing).
func TestStoreFaultSweepCovers(t *testing.T) {
	swept := map[string]bool{}
	e := newRBEnv(t)
	for _, sc := range rbScenarios() {
		p, _ := sc.request(e)
		swept[p] = true
	}
	for _, p := range []string{
		protocol.PathCreateNetwork, protocol.PathDeleteNetwork, protocol.PathCreateEndpoint, protocol.PathDeleteEndpoint,
		protocol.PathJoin, protocol.PathLeave, protocol.PathRequestPool, protocol.PathReleasePool,
		protocol.PathRequestAddress, protocol.PathReleaseAddress,
	} {
		assert.True(t, swept[p], "%s is swept", p)
	}
	// The calls that are not swept write nothing.
	e.mkJoined(false)
	e.mkPool()
	before := e.state()
	e.fault.arm(1)
	for _, c := range []struct{ path, body string }{
		{protocol.PathActivate, ``},
		{protocol.PathGetCapabilities, ``},
		{protocol.PathAllocateNetwork, `{"NetworkID":"net1"}`},
		{protocol.PathFreeNetwork, `{"NetworkID":"net1"}`},
		{protocol.PathEndpointOperInfo, rbEP},
		{protocol.PathDiscoverNew, `{}`},
		{protocol.PathDiscoverDelete, `{}`},
		{protocol.PathProgramExternalConnectivity, rbEP},
		{protocol.PathRevokeExternalConnectivity, rbEP},
		{protocol.PathIpamGetCapabilities, ``},
		{protocol.PathGetDefaultAddressSpaces, ``},
	} {
		assert.False(t, swept[c.path])
		e.ok(c.path, c.body)
	}
	writes, _ := e.fault.disarm()
	assert.Zero(t, writes, "calls that are not swept wrote")
	e.assertState(before, "after calls that record nothing")
}

// TestReleasePoolAllocatorFailure proves that a ReleasePool whose allocator
// fails after the server deleted the pool's records (which it does first)
// puts them back: the request answers with the allocator's error, the pool
// stays held under the daemon's ID with its addresses, in the server and in
// a server made again on the store, and a retry then releases it.
func TestReleasePoolAllocatorFailure(t *testing.T) {
	e := newRBEnv(t)
	e.mkPool()
	e.ok(protocol.PathRequestAddress, e.addrBody("10.171.0.5"))
	before := e.state()
	require.Len(t, before.Records, 3, "the pool and its two addresses")

	e.alloc.failRelease.Store(true)
	code, out := call(t, e.s, http.MethodPost, protocol.PathReleasePool, `{"PoolID":"`+e.pool+`"}`)
	e.alloc.failRelease.Store(false)
	assert.Equal(t, http.StatusInternalServerError, code)
	assert.Contains(t, out["Err"], errAllocFault.Error())
	e.assertState(before, "after the failed release")
	e.ok(protocol.PathRequestAddress, e.addrBody("10.171.0.6"))
	e.ok(protocol.PathReleaseAddress, e.addrBody("10.171.0.6"))

	e.reopen()
	e.assertState(before, "after a server was made again on the store")
	code, _ = call(t, e.s, http.MethodPost, protocol.PathRequestAddress, e.addrBody("10.171.0.5"))
	assert.Equal(t, http.StatusInternalServerError, code, "10.171.0.5 is still held")
	e.ok(protocol.PathReleasePool, `{"PoolID":"`+e.pool+`"}`)
	e.assertClean()
	e.ans = e.ok(protocol.PathRequestPool, `{"AddressSpace":"local","Pool":"10.171.0.0/24"}`)
	e.ok(protocol.PathReleasePool, `{"PoolID":"`+e.ans["PoolID"].(string)+`"}`)
}
