package firewall

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"

	"golang.org/x/sys/unix"
)

// readSysctl returns the value of the sysctl at path (below /proc/sys, e.g.
// "net/bridge/bridge-nf-call-iptables") as seen in namespace nsFD, and false if
// it does not exist there.
//
// /proc/sys/net resolves against the network namespace of the calling thread,
// so the file is read on a new goroutine locked to its OS thread and switched
// into nsFD; the caller's thread never moves. If switching back fails the
// thread stays locked, and the runtime discards it when the goroutine exits.
//
// TODO: use the osl package's namespace helper once it exists.
func readSysctl(nsFD int, path string) (string, bool, error) {
	type result struct {
		val    string
		exists bool
		err    error
	}
	ch := make(chan result, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := unix.Open("/proc/thread-self/ns/net", unix.O_RDONLY|unix.O_CLOEXEC, 0)
		if err != nil {
			runtime.UnlockOSThread()
			ch <- result{err: fmt.Errorf("open own network namespace: %w", err)}
			return
		}
		defer unix.Close(orig)
		if err := unix.Setns(nsFD, unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread() // setns failed: the thread did not move
			ch <- result{err: fmt.Errorf("enter network namespace: %w", err)}
			return
		}
		b, rerr := os.ReadFile("/proc/sys/" + path)
		if err := unix.Setns(orig, unix.CLONE_NEWNET); err != nil {
			ch <- result{err: fmt.Errorf("return to own network namespace: %w", err)}
			return // the thread stays locked: it is in the wrong namespace
		}
		runtime.UnlockOSThread()
		switch {
		case errors.Is(rerr, fs.ErrNotExist):
			ch <- result{}
		case rerr != nil:
			ch <- result{err: rerr}
		default:
			ch <- result{val: strings.TrimSpace(string(b)), exists: true}
		}
	}()
	r := <-ch
	if r.err != nil {
		return "", false, fmt.Errorf("read sysctl %s: %w", strings.ReplaceAll(path, "/", "."), r.err)
	}
	return r.val, r.exists, nil
}
