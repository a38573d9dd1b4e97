package portalloc_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/portalloc"
)

// newHostNS makes a throwaway namespace to act as the controller's host
// namespace, deleted when the test ends. The test's goroutine never enters
// it: sockets are opened inside through Namespace.Do.
func newHostNS(t testing.TB) *osl.Namespace {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes a network namespace")
	}
	ns, err := osl.NewNamespace(context.Background(), filepath.Join(t.TempDir(), "host"))
	if errors.Is(err, errdefs.ErrNotSupported) {
		t.Skip(err)
	}
	require.NoError(t, err)
	t.Cleanup(func() { assert.NoError(t, ns.Delete()) })
	return ns
}

// newBindAllocator returns an allocator whose bind test runs in ns (nil:
// none).
func newBindAllocator(t testing.TB, ns *osl.Namespace, eph portalloc.Range) *portalloc.Allocator {
	t.Helper()
	a, err := portalloc.New(portalloc.Config{HostNS: ns, Ephemeral: eph})
	require.NoError(t, err)
	return a
}
