//go:build !linux

package main

import "os"

// removeDir removes the demo's temp dir (the demo needs Linux: New fails
// before any namespace is made).
func removeDir(dir string) error { return os.RemoveAll(dir) }
