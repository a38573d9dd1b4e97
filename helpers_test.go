package cnm_test

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm"
)

const (
	leakWait  = 10 * time.Second
	pollEvery = 20 * time.Millisecond
)

// deleteAll deletes every sandbox, endpoint and network of ctrl through
// the API, failing the test on any error.
func deleteAll(t testing.TB, ctrl *cnm.Controller) {
	t.Helper()
	ctx := context.Background()
	for _, sb := range ctrl.Sandboxes() {
		require.NoError(t, sb.Delete(ctx))
	}
	for _, nw := range ctrl.Networks() {
		for _, ep := range nw.Endpoints() {
			require.NoError(t, ep.Delete(ctx))
		}
		require.NoError(t, nw.Delete(ctx))
	}
}

// ipv4Subnet is the option of a network with the IPv4 subnet p.
func ipv4Subnet(p string) cnm.NetworkOption {
	return cnm.WithIPv4(cnm.IPAMConfig{Subnet: netip.MustParsePrefix(p)})
}
