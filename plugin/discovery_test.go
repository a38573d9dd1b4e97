package plugin_test

import (
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/stretchr/testify/assert"
	"github.com/stretchr/testify/require"

	"github.com/seed53641549/cnm/errdefs"
	"github.com/seed53641549/cnm/plugin"
)

// listenUnix makes a unix socket at path, closed when the test ends.
func listenUnix(t testing.TB, path string) net.Listener {
	t.Helper()
	require.NoError(t, os.MkdirAll(filepath.Dir(path), 0o755))
	l, err := net.Listen("unix", path)
	require.NoError(t, err)
	t.Cleanup(func() { l.Close() })
	return l
}

func TestDiscoveryLookup(t *testing.T) {
	sockDir, specDir, libDir := t.TempDir(), t.TempDir(), t.TempDir()
	d := plugin.Discovery{SocketDirs: []string{sockDir}, SpecDirs: []string{specDir, libDir}}

	listenUnix(t, filepath.Join(sockDir, "flat.sock"))
	listenUnix(t, filepath.Join(sockDir, "nested", "nested.sock"))
	write := func(dir, name, content string) {
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(dir, name)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644))
	}
	write(specDir, "spec.spec", "unix:///run/x/spec.sock\n")
	write(specDir, "tcp.spec", "tcp://127.0.0.1:8080")
	write(libDir, "js.json", `{"Name":"js","Addr":"unix:///run/js.sock"}`)
	write(libDir, "sub/sub.spec", "/run/sub.sock")
	write(specDir, "tls.json", `{"Name":"tls","Addr":"tcp://127.0.0.1:1","TLSConfig":{"CAFile":"x"}}`)
	write(specDir, "bad.spec", "ftp://x")
	write(specDir, "badjson.json", "{")
	write(specDir, "big.spec", strings.Repeat("x", 70<<10))
	// A socket wins over a spec file of the same name.
	write(specDir, "flat.spec", "unix:///elsewhere.sock")
	// A regular file named like a socket is not a socket.
	write(sockDir, "fake.sock", "")

	for _, tc := range []struct{ name, network, addr string }{
		{"flat", "unix", filepath.Join(sockDir, "flat.sock")},
		{"nested", "unix", filepath.Join(sockDir, "nested", "nested.sock")},
		{"spec", "unix", "/run/x/spec.sock"},
		{"tcp", "tcp", "127.0.0.1:8080"},
		{"js", "unix", "/run/js.sock"},
		{"sub", "unix", "/run/sub.sock"},
	} {
		s, err := d.Lookup(tc.name)
		require.NoError(t, err, tc.name)
		assert.Equal(t, tc.network, s.Network, tc.name)
		assert.Equal(t, tc.addr, s.Address, tc.name)
		assert.Equal(t, tc.name, s.Name)
		assert.NotEmpty(t, s.Source)
	}

	_, err := d.Lookup("tls")
	require.ErrorIs(t, err, errdefs.ErrNotSupported)
	assert.ErrorContains(t, err, "tls.json")
	_, err = d.Lookup("bad")
	require.ErrorIs(t, err, errdefs.ErrInvalid)
	assert.ErrorContains(t, err, `"ftp://x"`)
	_, err = d.Lookup("badjson")
	require.ErrorIs(t, err, errdefs.ErrInvalid)
	assert.ErrorContains(t, err, "badjson.json")
	_, err = d.Lookup("big")
	require.ErrorIs(t, err, errdefs.ErrInvalid)
	_, err = d.Lookup("fake")
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	_, err = d.Lookup("nosuch")
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	assert.ErrorContains(t, err, sockDir)
	assert.ErrorContains(t, err, libDir)

	for _, bad := range []string{"", ".", "..", "a/b", "../etc/x", "a\x00b", strings.Repeat("n", 256)} {
		_, err := d.Lookup(bad)
		require.ErrorIs(t, err, errdefs.ErrInvalid, "%q", bad)
	}
}

func TestDiscoveryDefaults(t *testing.T) {
	var d plugin.Discovery
	_, err := d.Lookup("cnm-test-no-such-plugin")
	require.ErrorIs(t, err, errdefs.ErrNotFound)
	for _, dir := range []string{plugin.DefaultSocketDir, plugin.DefaultSpecDir, plugin.DefaultLibDir} {
		assert.ErrorContains(t, err, dir)
	}
}

func TestParseAddress(t *testing.T) {
	for _, tc := range []struct{ in, network, addr string }{
		{"unix:///a/b.sock", "unix", "/a/b.sock"},
		{"/a/../b.sock", "unix", "/b.sock"},
		{" tcp://127.0.0.1:99 ", "tcp", "127.0.0.1:99"},
		{"http://localhost:99", "tcp", "localhost:99"},
	} {
		s, err := plugin.ParseAddress("p", tc.in)
		require.NoError(t, err, tc.in)
		assert.Equal(t, tc.network, s.Network)
		assert.Equal(t, tc.addr, s.Address)
	}
	for _, bad := range []string{"", "relative.sock", "unix://host/x", "unix:rel", "tcp://", "tcp://h:1/path", "ftp://x", "%zz"} {
		_, err := plugin.ParseAddress("p", bad)
		require.ErrorIs(t, err, errdefs.ErrInvalid, "%q", bad)
	}
	_, err := plugin.ParseAddress("p", "https://h:1")
	require.ErrorIs(t, err, errdefs.ErrNotSupported)
}
