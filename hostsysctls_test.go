package cnm_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/cnmtest"
)

// TestWithoutHostSysctls: with the option, a network that needs IP
// forwarding while it is off fails with an error naming the sysctl, and no
// sysctl of the host namespace changes; once the runtime turns forwarding
// on, networks are made.
func TestWithoutHostSysctls(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ctrl, host := cnmtest.NewController(t, cnm.WithoutHostSysctls())
	require.NoError(t, host.NS.SetSysctl("net.ipv4.ip_forward", "0"))
	v4 := cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix("10.61.0.0/24")})

	_, err := ctrl.NewNetwork(ctx, "bridge", "out", v4)
	require.ErrorIs(t, err, cnm.ErrNotSupported)
	assert.ErrorContains(t, err, "net.ipv4.ip_forward=1")
	fwd, err := host.NS.Sysctl("net.ipv4.ip_forward")
	require.NoError(t, err)
	assert.Equal(t, "0", fwd)

	nw, err := ctrl.NewNetwork(ctx, "bridge", "inside", v4, cnm.WithInternal())
	require.NoError(t, err, "an internal network needs no forwarding")
	require.NoError(t, nw.Delete(ctx))

	require.NoError(t, host.NS.SetSysctl("net.ipv4.ip_forward", "1"))
	nw, err = ctrl.NewNetwork(ctx, "bridge", "out", v4)
	require.NoError(t, err)
	require.NoError(t, nw.Delete(ctx))
	cnmtest.AssertNoLeaks(t, host)
}
