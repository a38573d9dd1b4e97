package main

import (
	"errors"
	"fmt"
	"os"
	"strings"

	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/cnmtest"
)

// removeDir removes the demo's temp dir. A namespace file still mounted
// below it is a leak of the teardown: reported, and detached so the
// directory goes anyway.
func removeDir(dir string) error {
	leaked := cnmtest.MountsUnder(dir)
	for _, m := range leaked {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
	err := os.RemoveAll(dir)
	if len(leaked) > 0 {
		err = errors.Join(err, fmt.Errorf("still mounted after teardown: %s", strings.Join(leaked, ", ")))
	}
	return err
}
