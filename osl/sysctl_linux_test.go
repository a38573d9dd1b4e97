package osl

import (
	"context"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"
)

// TestSysctls reads a pattern of sysctls in one namespace: only its own
// interfaces, keyed in the slash form that SetSysctl takes, also for a name
// with a dot.
func TestSysctls(t *testing.T) {
	ctx := context.Background()
	a := newTestNS(t)
	b := newTestNS(t)
	_, err := a.AddBridge(ctx, BridgeSpec{Name: "br.0"})
	require.NoError(t, err)
	require.NoError(t, a.SetSysctl("net/ipv6/conf/br.0/accept_ra", "2"))

	got, err := a.Sysctls("net/ipv6/conf/*/accept_ra")
	require.NoError(t, err)
	assert.Equal(t, "2", got["net/ipv6/conf/br.0/accept_ra"])
	assert.Contains(t, got, "net/ipv6/conf/lo/accept_ra")
	assert.Contains(t, got, "net/ipv6/conf/default/accept_ra")
	assert.Len(t, got, 4, "all, default, lo, br.0: %v", got)

	got, err = b.Sysctls("net/ipv6/conf/*/accept_ra")
	require.NoError(t, err)
	assert.NotContains(t, got, "net/ipv6/conf/br.0/accept_ra", "another namespace's interface")

	_, err = a.Sysctls("kernel/*")
	assert.ErrorContains(t, err, "only net.*")
}
