package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// removeDir removes the demo's temp dir. A namespace file still mounted
// below it is a leak of the teardown: reported, and detached so the
// directory goes anyway.
func removeDir(dir string) error {
	var leaked []string
	if mi, err := os.ReadFile("/proc/self/mountinfo"); err == nil {
		for _, line := range strings.Split(string(mi), "\n") {
			if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
				leaked = append(leaked, f[4])
				_ = unix.Unmount(f[4], unix.MNT_DETACH)
			}
		}
	}
	err := os.RemoveAll(dir)
	if len(leaked) > 0 {
		err = errors.Join(err, fmt.Errorf("still mounted after teardown: %s", strings.Join(leaked, ", ")))
	}
	return err
}
