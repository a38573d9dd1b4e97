package remote_test

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"testing"

	"github.com/docker/go-plugins-helpers/ipam"
	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/internal/plugintest"
	cnmipam "github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/ipam/remote"
	"github.com/seed53641549/cnm/plugin"
)

func client(t *testing.T, name, sock string) *plugin.Client {
	t.Helper()
	c, err := plugin.NewClient(plugin.Config{Name: name, Locate: plugin.Fixed(plugin.Spec{Network: "unix", Address: sock})})
	require.NoError(t, err)
	t.Cleanup(c.Close)
	return c
}

func startIPAM(t *testing.T) (*plugintest.IPAMPlugin, *remote.Allocator) {
	t.Helper()
	p, err := plugintest.StartIPAM(filepath.Join(t.TempDir(), "ipt.sock"), netip.MustParsePrefix("10.201.0.0/24"), netip.MustParsePrefix("fd00:201::/64"))
	require.NoError(t, err)
	t.Cleanup(func() { p.Close() })
	a, err := remote.New(client(t, "ipt", p.Socket))
	require.NoError(t, err)
	return p, a
}

// TestAllocatorAgainstSDKPlugin drives every IpamDriver call against a
// plugin written with Docker's SDK.
func TestAllocatorAgainstSDKPlugin(t *testing.T) {
	p, a := startIPAM(t)
	ctx := context.Background()
	local, global := a.AddressSpaces()
	assert.Equal(t, []string{"LocalDefault", "GlobalDefault"}, []string{local, global})

	pool, err := a.RequestPool(ctx, cnmipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, netip.MustParsePrefix("10.201.0.0/24"), pool.Subnet)
	gw, err := a.RequestAddress(ctx, pool.ID, cnmipam.AddressRequest{Preferred: netip.MustParseAddr("10.201.0.1")})
	require.NoError(t, err)
	assert.Equal(t, "10.201.0.1", gw.String())
	addr, err := a.RequestAddress(ctx, pool.ID, cnmipam.AddressRequest{})
	require.NoError(t, err)
	assert.Equal(t, "10.201.0.2", addr.String())
	require.NoError(t, a.ReleaseAddress(ctx, pool.ID, addr))

	v6, err := a.RequestPool(ctx, cnmipam.PoolRequest{V6: true, Subnet: netip.MustParsePrefix("fd00:9::/64"), IPRange: netip.MustParsePrefix("fd00:9::/80")})
	require.NoError(t, err)
	assert.Equal(t, "fd00:9::/64", v6.Subnet.String())
	assert.Equal(t, "fd00:9::/80", v6.IPRange.String())
	require.NoError(t, a.ReleasePool(ctx, v6.ID))

	// The plugin's own refusal reaches the caller, naming plugin and call.
	_, err = a.RequestPool(ctx, cnmipam.PoolRequest{Subnet: netip.MustParsePrefix("10.201.0.0/16")})
	require.ErrorIs(t, err, plugin.ErrPlugin)
	assert.ErrorContains(t, err, `plugin "ipt": IpamDriver.RequestPool: plugin error: pool 10.201.0.0/16 overlaps 10.201.0.0/24`)
	_, err = a.RequestAddress(ctx, pool.ID, cnmipam.AddressRequest{Preferred: netip.MustParseAddr("10.201.0.1")})
	require.ErrorIs(t, err, plugin.ErrPlugin)
	assert.ErrorContains(t, err, "in use")

	require.NoError(t, a.ReleaseAddress(ctx, pool.ID, gw))
	require.NoError(t, a.ReleasePool(ctx, pool.ID))
	assert.Empty(t, p.Pools())

	methods := p.Methods()
	assert.Equal(t, []string{"IpamDriver.GetCapabilities", "IpamDriver.GetDefaultAddressSpaces", "IpamDriver.RequestPool"}, methods[:3])
	calls := p.Calls()
	var sawRange bool
	for _, c := range calls {
		if r, ok := c.Request.(*ipam.RequestPoolRequest); ok && r.V6 {
			assert.Equal(t, "fd00:9::/64", r.Pool)
			assert.Equal(t, "fd00:9::/80", r.SubPool)
			assert.Equal(t, "LocalDefault", r.AddressSpace)
			sawRange = true
		}
	}
	assert.True(t, sawRange)

	_, err = a.RequestPool(ctx, cnmipam.PoolRequest{Size: 24})
	require.ErrorIs(t, err, errdefs.ErrNotSupported)
	assert.ErrorContains(t, err, "Size 24")
	_, err = a.RequestPool(ctx, cnmipam.PoolRequest{Subnet: netip.MustParsePrefix("10.1.0.0/16"), V6: true})
	require.ErrorIs(t, err, errdefs.ErrInvalid)
}

// fake serves fixed answers per path.
func fake(t *testing.T, answers map[string]any, seen *[]string) *remote.Allocator {
	t.Helper()
	sock := filepath.Join(t.TempDir(), "fake.sock")
	l, err := net.Listen("unix", sock)
	require.NoError(t, err)
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		*seen = append(*seen, r.URL.Path+" "+string(body))
		a, ok := answers[r.URL.Path]
		if !ok {
			a = map[string]any{}
		}
		json.NewEncoder(w).Encode(a)
	})}
	go srv.Serve(l)
	t.Cleanup(func() { srv.Close() })
	a, err := remote.New(client(t, "fake", sock))
	require.NoError(t, err)
	return a
}

// TestAllocatorRefusesBadAnswers: an answer that breaks the rules is an
// error naming the field and value, and what was reserved is released.
func TestAllocatorRefusesBadAnswers(t *testing.T) {
	ctx := context.Background()
	for _, tc := range []struct {
		name string
		req  cnmipam.PoolRequest
		pool map[string]any
		text string
	}{
		{"no pool ID", cnmipam.PoolRequest{}, map[string]any{"Pool": "10.0.0.0/24"}, "PoolID is empty"},
		{"not a prefix", cnmipam.PoolRequest{}, map[string]any{"PoolID": "p", "Pool": "banana"}, `Pool "banana"`},
		{"host bits", cnmipam.PoolRequest{}, map[string]any{"PoolID": "p", "Pool": "10.0.0.1/24"}, "host bits"},
		{"family", cnmipam.PoolRequest{V6: true}, map[string]any{"PoolID": "p", "Pool": "10.0.0.0/24"}, "wrong family"},
		{"other subnet", cnmipam.PoolRequest{Subnet: netip.MustParsePrefix("10.9.0.0/24")}, map[string]any{"PoolID": "p", "Pool": "10.0.0.0/24"}, "10.9.0.0/24 was asked for"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var seen []string
			a := fake(t, map[string]any{"/IpamDriver.RequestPool": tc.pool, "/Plugin.Activate": map[string]any{"Implements": []string{"IpamDriver"}}}, &seen)
			_, err := a.RequestPool(ctx, tc.req)
			require.ErrorIs(t, err, plugin.ErrProtocol)
			assert.ErrorContains(t, err, `plugin "fake": IpamDriver.RequestPool: `)
			assert.ErrorContains(t, err, tc.text)
			if tc.pool["PoolID"] != nil {
				assert.Contains(t, seen[len(seen)-1], `/IpamDriver.ReleasePool {"PoolID":"p"}`)
			}
		})
	}

	var seen []string
	a := fake(t, map[string]any{
		"/Plugin.Activate":           map[string]any{"Implements": []string{"IpamDriver"}},
		"/IpamDriver.RequestPool":    map[string]any{"PoolID": "p", "Pool": "10.0.0.0/24"},
		"/IpamDriver.RequestAddress": map[string]any{"Address": "10.9.9.9/24"},
	}, &seen)
	pool, err := a.RequestPool(ctx, cnmipam.PoolRequest{})
	require.NoError(t, err)
	_, err = a.RequestAddress(ctx, pool.ID, cnmipam.AddressRequest{})
	require.ErrorIs(t, err, plugin.ErrProtocol)
	assert.ErrorContains(t, err, `Address "10.9.9.9/24" is not in pool 10.0.0.0/24`)
	assert.Contains(t, seen[len(seen)-1], `/IpamDriver.ReleaseAddress {"PoolID":"p","Address":"10.9.9.9"}`)

	// A network driver is not an IPAM driver.
	seen = nil
	a = fake(t, map[string]any{"/Plugin.Activate": map[string]any{"Implements": []string{"NetworkDriver"}}}, &seen)
	_, err = a.RequestPool(ctx, cnmipam.PoolRequest{})
	require.ErrorIs(t, err, errdefs.ErrNotSupported)
	assert.ErrorContains(t, err, "not IpamDriver")
}
