//go:build linux

package firewall

import (
	"context"
	"flag"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/google/nftables"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/errdefs"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the rules read back from the kernel")

// checkGolden compares got with testdata/<name>.golden, or rewrites the file
// with -update.
func checkGolden(t *testing.T, name, got string) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		require.NoError(t, os.MkdirAll("testdata", 0o755))
		require.NoError(t, os.WriteFile(path, []byte(got), 0o644))
		return
	}
	want, err := os.ReadFile(path)
	require.NoError(t, err, "run go test -update to create it")
	assert.Equal(t, string(want), got, "rules differ from %s (go test -update rewrites it)", path)
}

func ruleCount(t *testing.T, f *Firewall) int {
	t.Helper()
	n, err := f.RuleCount(context.Background())
	require.NoError(t, err)
	return n
}

// TestAddNetworkRules reads each network's rules back from the kernel and
// compares them with a golden file; removing the networks leaves the empty
// tables.
func TestAddNetworkRules(t *testing.T) {
	a := testNetwork("n1", "br-a", "198.18.1.0/24")
	iccOff := a
	iccOff.ICC = false
	internal := a
	internal.Internal = true
	noMasq := a
	noMasq.Masquerade = false
	dual := testNetwork("n1", "br-a", "198.18.1.0/24", "2001:db8:1::/64", "198.18.128.0/17")
	host := testNetwork("n1", "br-a", "198.18.1.7/32", "2001:db8::7/128")
	b := testNetwork("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef", "br-b", "198.18.2.0/24")
	b.ICC = false

	for _, tc := range []struct {
		name     string
		networks []Network
	}{
		{"default", []Network{a}},
		{"icc-off", []Network{iccOff}},
		{"internal", []Network{internal}},
		{"no-masquerade", []Network{noMasq}},
		{"dual-stack", []Network{dual}},
		{"host-prefixes", []Network{host}},
		{"two-networks", []Network{a, b}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			ctx := context.Background()
			fd := newNS(t)
			f := openFirewall(t, fd)
			for _, n := range tc.networks {
				require.NoError(t, f.AddNetwork(ctx, n))
			}
			checkGolden(t, tc.name, dump(t, fd, "cnm"))
			for _, n := range tc.networks {
				require.NoError(t, f.RemoveNetwork(ctx, n.ID))
			}
			assert.Zero(t, ruleCount(t, f))
			checkGolden(t, "empty", dump(t, fd, "cnm"))
		})
	}
}

// TestRemoveNetworkKeepsOthers removes one of two networks.
func TestRemoveNetworkKeepsOthers(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	require.NoError(t, f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24")))
	want := dump(t, fd, "cnm")
	require.NoError(t, f.AddNetwork(ctx, testNetwork("n2", "br-b", "198.18.2.0/24")))
	require.NoError(t, f.RemoveNetwork(ctx, "n2"))
	assert.Equal(t, want, dump(t, fd, "cnm"))
	require.NoError(t, f.RemoveNetwork(ctx, "n2"), "second removal")
	require.NoError(t, f.RemoveNetwork(ctx, "unknown"))
	require.NoError(t, f.RemoveNetwork(ctx, "n1"))
	assert.Zero(t, ruleCount(t, f))
}

func TestAddNetworkExists(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	require.NoError(t, f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24")))
	n := ruleCount(t, f)

	err := f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24"))
	require.ErrorIs(t, err, errdefs.ErrExists)
	assert.ErrorContains(t, err, "n1")
	err = f.AddNetwork(ctx, testNetwork("n1", "br-other", "198.18.9.0/24"))
	require.ErrorIs(t, err, errdefs.ErrExists, "same ID, other bridge")
	err = f.AddNetwork(ctx, testNetwork("n2", "br-a", "198.18.2.0/24"))
	require.ErrorIs(t, err, errdefs.ErrExists, "same bridge, other ID")
	assert.ErrorContains(t, err, `bridge "br-a"`)
	assert.Equal(t, n, ruleCount(t, f), "a failed add left rules")

	require.NoError(t, f.RemoveNetwork(ctx, "n1"))
	assert.Zero(t, ruleCount(t, f))
}

func TestAddNetworkInvalid(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	ok := testNetwork("n1", "br-a", "198.18.1.0/24")
	with := func(mod func(*Network)) Network {
		n := ok
		n.Subnets = append([]netip.Prefix(nil), ok.Subnets...)
		mod(&n)
		return n
	}
	for _, tc := range []struct {
		name    string
		n       Network
		mention string
	}{
		{"empty id", with(func(n *Network) { n.ID = "" }), `network id ""`},
		{"long id", with(func(n *Network) { n.ID = strings.Repeat("a", 65) }), "network id"},
		{"id with space", with(func(n *Network) { n.ID = "a b" }), `network id "a b"`},
		{"id with quote", with(func(n *Network) { n.ID = `a"b` }), "network id"},
		{"empty bridge", with(func(n *Network) { n.Bridge = "" }), `bridge ""`},
		{"long bridge", with(func(n *Network) { n.Bridge = "br-0123456789abc" }), `bridge "br-0123456789abc"`},
		{"bridge with slash", with(func(n *Network) { n.Bridge = "br/a" }), `bridge "br/a"`},
		{"bridge with colon", with(func(n *Network) { n.Bridge = "br:a" }), `bridge "br:a"`},
		{"bridge with space", with(func(n *Network) { n.Bridge = "br a" }), `bridge "br a"`},
		{"bridge dot", with(func(n *Network) { n.Bridge = "." }), `bridge "."`},
		{"zero subnet", with(func(n *Network) { n.Subnets = append(n.Subnets, netip.Prefix{}) }), "subnet invalid Prefix"},
		{"host bits", with(func(n *Network) { n.Subnets = []netip.Prefix{netip.MustParsePrefix("198.18.1.1/24")} }), "subnet 198.18.1.1/24"},
		{"4in6", with(func(n *Network) { n.Subnets = []netip.Prefix{netip.MustParsePrefix("::ffff:198.18.1.0/120")} }), "subnet ::ffff:198.18.1.0/120"},
		{"duplicate", with(func(n *Network) { n.Subnets = append(n.Subnets, n.Subnets[0]) }), "subnet 198.18.1.0/24"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := f.AddNetwork(ctx, tc.n)
			require.ErrorIs(t, err, errdefs.ErrInvalid)
			assert.ErrorContains(t, err, tc.mention)
			assert.Zero(t, ruleCount(t, f))
		})
	}
	require.ErrorIs(t, f.RemoveNetwork(ctx, ""), errdefs.ErrInvalid)
	checkGolden(t, "empty", dump(t, fd, "cnm"))
}

// TestAddNetworkAtomic makes the kernel reject a batch after its first rules
// (the postrouting chain was removed behind the firewall's back) and checks
// that none of the network's rules stayed.
func TestAddNetworkAtomic(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	c, err := nftables.New(nftables.WithNetNSFd(fd))
	require.NoError(t, err)
	c.DelChain(f.postrouting)
	require.NoError(t, c.Flush())

	err = f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24"))
	require.ErrorIs(t, err, unix.ENOENT)
	rules, err := c.GetRules(f.table, f.allow)
	require.NoError(t, err)
	assert.Empty(t, rules, "allow rules of a failed batch")
	assert.Zero(t, ruleCount(t, f))

	// The connection is usable after the failure (an internal network has
	// no rule in postrouting), and New repairs the chain.
	require.NoError(t, f.AddNetwork(ctx, Network{ID: "n2", Bridge: "br-b", Internal: true}))
	require.NoError(t, f.RemoveNetwork(ctx, "n2"))
	f2, err := New(ctx, fd, "cnm")
	require.NoError(t, err)
	require.NoError(t, f2.Close())
	require.NoError(t, f.AddNetwork(ctx, testNetwork("n1", "br-a", "198.18.1.0/24")))
	require.NoError(t, f.RemoveNetwork(ctx, "n1"))
	assert.Zero(t, ruleCount(t, f))
}

// TestManyNetworks adds and removes 200 networks, then one network whose
// single batch holds 500 rules: at the default netlink buffer sizes such a
// batch fails with ENOBUFS or EMSGSIZE.
func TestManyNetworks(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	const count = 200
	for i := range count {
		n := testNetwork(fmt.Sprintf("net%03d", i), fmt.Sprintf("br%d", i),
			fmt.Sprintf("198.18.%d.0/24", i), fmt.Sprintf("2001:db8:%x::/64", i))
		n.ICC = i%2 == 0
		require.NoError(t, f.AddNetwork(ctx, n))
	}
	// Per network: 1 or 2 rules in allow, 1 in isolate, 2 masquerade, 2
	// hairpin and 1 localhost masquerade.
	assert.Equal(t, count*7+count/2, ruleCount(t, f))
	for i := range count {
		require.NoError(t, f.RemoveNetwork(ctx, fmt.Sprintf("net%03d", i)))
	}
	assert.Zero(t, ruleCount(t, f))

	big := Network{ID: "big", Bridge: "br-big", Masquerade: true, ICC: true}
	for i := range 248 { // 2 masquerade rules each, and 4 more in allow, isolate and postrouting
		big.Subnets = append(big.Subnets, netip.MustParsePrefix(fmt.Sprintf("198.19.%d.%d/30", i/64, i%64*4)))
	}
	require.NoError(t, f.AddNetwork(ctx, big))
	assert.Equal(t, 500, ruleCount(t, f))
	require.NoError(t, f.RemoveNetwork(ctx, "big"))
	assert.Zero(t, ruleCount(t, f))
}

// TestConcurrent adds and removes networks from several goroutines; run with
// -race.
func TestConcurrent(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	fd := newNS(t)
	f := openFirewall(t, fd)
	var wg sync.WaitGroup
	errs := make(chan error, 16)
	for g := range 8 {
		wg.Go(func() {
			for i := range 5 {
				id := fmt.Sprintf("g%d-%d", g, i)
				if err := f.AddNetwork(ctx, testNetwork(id, fmt.Sprintf("br%d-%d", g, i), fmt.Sprintf("198.18.%d.0/24", g*8+i))); err != nil {
					errs <- err
					return
				}
				if _, err := f.RuleCount(ctx); err != nil {
					errs <- err
					return
				}
				if i%2 == 0 {
					if err := f.RemoveNetwork(ctx, id); err != nil {
						errs <- err
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}
	assert.Equal(t, 8*2*6, ruleCount(t, f)) // 2 networks left per goroutine, 6 rules each
	for g := range 8 {
		for i := range 5 {
			require.NoError(t, f.RemoveNetwork(ctx, fmt.Sprintf("g%d-%d", g, i)))
		}
	}
	assert.Zero(t, ruleCount(t, f))
}

func TestContextCanceled(t *testing.T) {
	t.Parallel()
	fd := newNS(t)
	f := openFirewall(t, fd)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	require.ErrorIs(t, f.AddNetwork(ctx, testNetwork("n1", "br-a")), context.Canceled)
	require.ErrorIs(t, f.RemoveNetwork(ctx, "n1"), context.Canceled)
	_, err := New(ctx, fd, "cnm")
	require.ErrorIs(t, err, context.Canceled)
	assert.Zero(t, ruleCount(t, f))
}
