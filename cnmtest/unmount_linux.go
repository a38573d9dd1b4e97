package cnmtest

import "golang.org/x/sys/unix"

// unmountUnder detaches every mount below dir (namespaces' bind mounts).
func unmountUnder(dir string) {
	for _, m := range MountsUnder(dir) {
		_ = unix.Unmount(m, unix.MNT_DETACH)
	}
}
