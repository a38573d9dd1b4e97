package ipam_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/ipam"
)

func TestRegistry(t *testing.T) {
	var r ipam.Registry
	def := newAllocator(t)
	require.NoError(t, ipam.RegisterBuiltins(&r, def))
	assert.Equal(t, []string{"default", "null"}, r.Names())

	got, err := r.Allocator(ipam.DefaultDriver)
	require.NoError(t, err)
	assert.Same(t, def, got)
	got, err = r.Allocator(ipam.NullDriver)
	require.NoError(t, err)
	assert.Equal(t, ipam.NullAllocator{}, got)

	_, err = r.Allocator("remote")
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	assert.ErrorContains(t, err, `ipam driver "remote" (registered: [default null])`)

	for _, tc := range []struct {
		name string
		reg  string
		a    ipam.Allocator
		is   error
		msg  string
	}{
		{"taken", "null", ipam.NullAllocator{}, errdefs.ErrExists, `ipam driver "null" is already registered`},
		{"empty name", "", ipam.NullAllocator{}, errdefs.ErrInvalid, "name and allocator are required"},
		{"nil allocator", "x", nil, errdefs.ErrInvalid, "name and allocator are required"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := r.RegisterAllocator(tc.reg, tc.a)
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.msg)
			assert.Equal(t, []string{"default", "null"}, r.Names())
		})
	}
	require.ErrorIs(t, ipam.RegisterBuiltins(&r, def), errdefs.ErrExists)
}

func TestNullAllocator(t *testing.T) {
	var n ipam.NullAllocator
	ctx := t.Context()
	local, global := n.AddressSpaces()
	assert.Equal(t, ipam.LocalSpace, local)
	assert.Equal(t, ipam.GlobalSpace, global)

	p4, err := n.RequestPool(ctx, ipam.PoolRequest{})
	require.NoError(t, err)
	assert.Equal(t, ipam.Pool{ID: ipam.NullPoolV4, Subnet: prefix("0.0.0.0/0")}, p4)
	again, err := n.RequestPool(ctx, ipam.PoolRequest{AddressSpace: ipam.GlobalSpace, Avoid: prefixes("10.0.0.0/8")})
	require.NoError(t, err)
	assert.Equal(t, p4, again, "every network gets the same pool")
	p6, err := n.RequestPool(ctx, ipam.PoolRequest{V6: true})
	require.NoError(t, err)
	assert.Equal(t, ipam.Pool{ID: ipam.NullPoolV6, Subnet: prefix("::/0")}, p6)

	for _, id := range []string{p4.ID, p6.ID} {
		got, err := n.RequestAddress(ctx, id, ipam.AddressRequest{})
		require.NoError(t, err)
		assert.False(t, got.IsValid(), "no address")
		require.NoError(t, n.ReleaseAddress(ctx, id, netip.Addr{}))
		require.NoError(t, n.ReleasePool(ctx, id))
		require.NoError(t, n.ReleasePool(ctx, id), "stateless: twice is fine")
	}

	for _, tc := range []struct {
		name string
		do   func() error
		is   error
		msg  string
	}{
		{"subnet", func() error {
			_, err := n.RequestPool(ctx, ipam.PoolRequest{Subnet: prefix("10.0.0.0/24")})
			return err
		},
			errdefs.ErrInvalid, "subnet 10.0.0.0/24: the null ipam driver hands out no address"},
		{"ip-range", func() error {
			_, err := n.RequestPool(ctx, ipam.PoolRequest{IPRange: prefix("10.0.0.0/28")})
			return err
		},
			errdefs.ErrInvalid, "ip-range 10.0.0.0/28"},
		{"size", func() error { _, err := n.RequestPool(ctx, ipam.PoolRequest{Size: 24}); return err },
			errdefs.ErrInvalid, "size 24"},
		{"unknown space", func() error { _, err := n.RequestPool(ctx, ipam.PoolRequest{AddressSpace: "x"}); return err },
			errdefs.ErrInvalid, `address space "x" is unknown`},
		{"preferred address", func() error {
			_, err := n.RequestAddress(ctx, p4.ID, ipam.AddressRequest{Preferred: addr("10.0.0.1")})
			return err
		}, errdefs.ErrNotSupported, "address 10.0.0.1: the null ipam driver hands out no address"},
		{"unknown pool", func() error {
			_, err := n.RequestAddress(ctx, "local/10.0.0.0/24#1", ipam.AddressRequest{})
			return err
		},
			errdefs.ErrNotFound, `pool "local/10.0.0.0/24#1"`},
		{"release unknown pool", func() error { return n.ReleasePool(ctx, "x") }, errdefs.ErrNotFound, `pool "x"`},
		{"release an address", func() error { return n.ReleaseAddress(ctx, p4.ID, addr("10.0.0.1")) },
			errdefs.ErrNotFound, "address 10.0.0.1 is not allocated"},
		{"release in unknown pool", func() error { return n.ReleaseAddress(ctx, "x", netip.Addr{}) }, errdefs.ErrNotFound, `pool "x"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.do()
			require.ErrorIs(t, err, tc.is)
			assert.ErrorContains(t, err, tc.msg)
		})
	}

	cctx, cancel := context.WithCancel(ctx)
	cancel()
	_, err = n.RequestPool(cctx, ipam.PoolRequest{})
	require.ErrorIs(t, err, context.Canceled)
	_, err = n.RequestAddress(cctx, p4.ID, ipam.AddressRequest{})
	require.ErrorIs(t, err, context.Canceled)
	require.ErrorIs(t, n.ReleasePool(cctx, p4.ID), context.Canceled)
	require.ErrorIs(t, n.ReleaseAddress(cctx, p4.ID, netip.Addr{}), context.Canceled)
}
