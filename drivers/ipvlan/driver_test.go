package ipvlan_test

import (
	"context"
	"net/netip"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/cnmtest"
	"github.com/seed53641549/cnm/driverapi"
	"github.com/seed53641549/cnm/drivers/ipvlan"
)

// TestCheckAddressing checks, through the driver, that l2 networks with a
// parent need a gateway and l3 and internal ones do not. Making a network
// makes no ipvlan link, so this runs on kernels without ipvlan too.
func TestCheckAddressing(t *testing.T) {
	ctx := context.Background()
	host := cnmtest.NewHostNS(t)
	newLAN(t, host)
	d, err := ipvlan.New(ipvlan.Config{HostNS: host.NS})
	require.NoError(t, err)
	noGW := &driverapi.IPAMData{Pool: netip.MustParsePrefix("10.0.0.0/24")}

	err = d.CreateNetwork(ctx, driverapi.NetworkRequest{ID: "l2", Name: "lan", Options: map[string]string{ipvlan.OptionParent: "eth1"}, IPv4: noGW})
	require.ErrorIs(t, err, driverapi.ErrInvalid)
	assert.ErrorContains(t, err, "network lan: subnet 10.0.0.0/24 has no gateway: an l2 ipvlan network with a parent needs")
	for _, req := range []driverapi.NetworkRequest{
		{ID: "l3", Name: "lan", Options: map[string]string{ipvlan.OptionParent: "eth1", ipvlan.OptionMode: "l3"}, IPv4: noGW},
		{ID: "internal", Name: "lan", Internal: true, IPv4: noGW},
	} {
		require.NoError(t, d.CreateNetwork(ctx, req), req.ID)
		require.NoError(t, d.DeleteNetwork(ctx, req.ID), req.ID)
	}
	cnmtest.AssertNoLeaks(t, host, "eth1")
}
