// Package cnmtest holds public helpers for tests of programs that use cnm:
// a throwaway host namespace, a controller inside it, running a function or
// a TCP exchange inside a namespace, and a leak check.
//
// Helpers that make kernel objects skip the test when not run as root. None
// of them moves the test's goroutine into another namespace, so t.Cleanup
// works as usual.
package cnmtest

import (
	"context"
	"os"
	"path/filepath"
	"testing"

	"github.com/seed53641549/cnm"
	"github.com/seed53641549/cnm/osl"
)

// HostNS is a throwaway host namespace with the directories a controller
// needs, all removed when the test ends.
type HostNS struct {
	NS      *osl.Namespace
	Path    string // the namespace file
	RunDir  string
	DataDir string
}

// SkipUnlessRoot skips the test unless it runs as root.
func SkipUnlessRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces and links")
	}
}

// NewHostNS makes a fresh network namespace for the test to use as a
// controller's host namespace, and deletes it (with every link inside) when
// the test ends.
func NewHostNS(t testing.TB) *HostNS {
	t.Helper()
	SkipUnlessRoot(t)
	dir := t.TempDir()
	h := &HostNS{Path: filepath.Join(dir, "host-netns"), RunDir: filepath.Join(dir, "run"), DataDir: filepath.Join(dir, "data")}
	ns, err := osl.NewNamespace(context.Background(), h.Path)
	if err != nil {
		t.Fatalf("cnmtest: make host namespace: %v", err)
	}
	h.NS = ns
	t.Cleanup(func() {
		if err := ns.Delete(); err != nil {
			t.Errorf("cnmtest: delete host namespace: %v", err)
		}
		// A test that failed before deleting its sandboxes leaves their
		// namespaces mounted: detached here, its temporary directory goes,
		// and its failure is the only one reported.
		unmountUnder(h.RunDir)
	})
	return h
}

// Options returns the controller options that put a controller in h.
func (h *HostNS) Options() []cnm.Option {
	return []cnm.Option{cnm.WithHostNamespace(h.Path), cnm.WithRunDir(h.RunDir), cnm.WithDataDir(h.DataDir)}
}

// NewController makes a controller in a fresh throwaway host namespace and
// closes it when the test ends. Extra options are applied after the
// namespace's own.
func NewController(t testing.TB, opts ...cnm.Option) (*cnm.Controller, *HostNS) {
	t.Helper()
	h := NewHostNS(t)
	c, err := cnm.New(append(h.Options(), opts...)...)
	if err != nil {
		t.Fatalf("cnmtest: new controller: %v", err)
	}
	t.Cleanup(func() {
		if err := c.Close(); err != nil {
			t.Errorf("cnmtest: close controller: %v", err)
		}
	})
	return c, h
}
