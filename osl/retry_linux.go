package osl

import (
	"errors"
	"fmt"

	"github.com/vishvananda/netlink"
)

// dumpRetries bounds how often an interrupted netlink dump is repeated. Under
// heavy churn (hundreds of links made and deleted per second) a dump is
// interrupted now and then; ten attempts in a row have never been seen to fail.
const dumpRetries = 10

// retryDump runs a netlink dump until it completes without interruption.
// Every list call of this package must go through it.
func retryDump[T any](what string, dump func() (T, error)) (T, error) {
	var (
		res T
		err error
	)
	for range dumpRetries {
		res, err = dump()
		if !errors.Is(err, netlink.ErrDumpInterrupted) {
			return res, err
		}
	}
	var zero T
	return zero, fmt.Errorf("%s: dump interrupted %d times in a row: %w", what, dumpRetries, err)
}
