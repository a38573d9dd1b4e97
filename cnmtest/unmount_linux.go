package cnmtest

import (
	"os"
	"strings"

	"golang.org/x/sys/unix"
)

// unmountUnder detaches every mount below dir (namespaces' bind mounts).
func unmountUnder(dir string) {
	mi, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return
	}
	for _, line := range strings.Split(string(mi), "\n") {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4], dir+"/") {
			_ = unix.Unmount(f[4], unix.MNT_DETACH)
		}
	}
}
