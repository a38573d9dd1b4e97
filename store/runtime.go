package store

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	bolt "go.etcd.io/bbolt"
)

// keyBoot is the meta key of the boot a runtime store was written in.
var keyBoot = []byte("boot-id")

// OpenRuntime opens (or makes) the store file in dir for runtime state:
// records that describe what a reboot ends (namespaces, interfaces).
//
//   - Writes are not flushed to disk (no fsync). A process killed at any
//     point leaves its writes in the page cache, where the next process
//     reads them; only a power loss or kernel crash loses them, and those
//     end the runtime state too.
//   - The file records the boot it was written in (the kernel's boot ID).
//     A file of an earlier boot describes nothing that still exists: it is
//     discarded and made anew, whether it reads well or not. A damaged
//     file of the current boot is refused with [ErrCorrupt], as [Open]
//     refuses one; a file locked by another process with [ErrLocked].
//
// bootID is the current boot's ID; "" reads it from the kernel.
func OpenRuntime(dir, bootID string) (*Bolt, error) {
	if bootID == "" {
		var err error
		if bootID, err = BootID(); err != nil {
			return nil, err
		}
	}
	path := filepath.Join(dir, FileName)
	b, err := openFile(path, true)
	switch {
	case errors.Is(err, ErrCorrupt) && writtenBeforeBoot(path):
		return reopenFresh(path, bootID)
	case err != nil:
		return nil, err
	}
	var stored []byte
	_ = b.db.View(func(tx *bolt.Tx) error {
		stored = append(stored, tx.Bucket(bucketMeta).Get(keyBoot)...)
		return nil
	})
	switch string(stored) {
	case bootID:
		return b, nil
	case "":
		if empty, err := b.empty(); err != nil || !empty {
			// Records of an unknown boot: only a file of an earlier
			// boot can be in that state.
			b.Close()
			return reopenFresh(path, bootID)
		}
	default:
		b.Close()
		return reopenFresh(path, bootID)
	}
	if err := b.setBoot(bootID); err != nil {
		b.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return b, nil
}

// reopenFresh discards the file at path and makes a new one for bootID.
func reopenFresh(path, bootID string) (*Bolt, error) {
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("store %s: discard the file of an earlier boot: %w", path, err)
	}
	b, err := openFile(path, true)
	if err != nil {
		return nil, err
	}
	if err := b.setBoot(bootID); err != nil {
		b.Close()
		return nil, fmt.Errorf("store %s: %w", path, err)
	}
	return b, nil
}

func (b *Bolt) setBoot(bootID string) error {
	return b.db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyBoot, []byte(bootID)) })
}

func (b *Bolt) empty() (bool, error) {
	empty := true
	err := b.db.View(func(tx *bolt.Tx) error {
		k, _ := tx.Bucket(bucketData).Cursor().First()
		empty = k == nil
		return nil
	})
	return empty, err
}

// BootID returns the kernel's ID of the current boot.
func BootID() (string, error) {
	b, err := os.ReadFile("/proc/sys/kernel/random/boot_id")
	if err != nil {
		return "", fmt.Errorf("read boot id: %w", err)
	}
	return strings.TrimSpace(string(b)), nil
}

// writtenBeforeBoot reports whether the file at path was last written
// before the machine booted.
func writtenBeforeBoot(path string) bool {
	fi, err := os.Stat(path)
	if err != nil {
		return false
	}
	boot, err := bootTime()
	return err == nil && fi.ModTime().Before(boot)
}

// bootTime reads the boot time (btime) from /proc/stat.
func bootTime() (time.Time, error) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return time.Time{}, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "btime "); ok {
			sec, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return time.Time{}, err
			}
			return time.Unix(sec, 0), nil
		}
	}
	return time.Time{}, errors.New("/proc/stat has no btime")
}
