package osl

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// sysctlPath maps "net.ipv4.ip_forward" or "net/ipv4/ip_forward" to its /proc
// file. Use the slash form when a component has a dot (an interface "eth1.50").
func sysctlPath(name string) (string, error) {
	if !strings.Contains(name, "/") {
		name = strings.ReplaceAll(name, ".", "/")
	}
	p := filepath.Join("/proc/sys", name)
	if !strings.HasPrefix(p, "/proc/sys/net/") {
		return "", fmt.Errorf("sysctl %q: only net.* sysctls belong to a network namespace", name)
	}
	return p, nil
}

// SetSysctl writes a net.* sysctl of this namespace. Such files resolve to the
// namespace of the thread that opens them, so the write runs in [Namespace.Do].
//
// Equivalent to: `ip netns exec $ns sysctl -w $name=$value`.
func (ns *Namespace) SetSysctl(name, value string) error {
	p, err := sysctlPath(name)
	if err != nil {
		return err
	}
	return ns.Do(func() error {
		if err := os.WriteFile(p, []byte(value), 0o644); err != nil {
			return fmt.Errorf("set sysctl %s=%s: %w", name, value, err)
		}
		return nil
	})
}

// Sysctl reads a net.* sysctl of this namespace.
func (ns *Namespace) Sysctl(name string) (string, error) {
	p, err := sysctlPath(name)
	if err != nil {
		return "", err
	}
	var v string
	err = ns.Do(func() error {
		b, err := os.ReadFile(p)
		if err != nil {
			return fmt.Errorf("read sysctl %s: %w", name, err)
		}
		v = strings.TrimSpace(string(b))
		return nil
	})
	return v, err
}

// Sysctls reads, in one visit to this namespace, every net.* sysctl whose
// name matches pattern, a [filepath.Match] pattern in the slash form such
// as "net/ipv6/conf/*/accept_ra". The result is keyed by name in the slash
// form ("net/ipv6/conf/eth1.50/accept_ra"), which [Namespace.SetSysctl]
// takes. A sysctl that vanishes while they are read (its interface was
// deleted) is left out.
//
// Equivalent to: `ip netns exec $ns grep -H . /proc/sys/$pattern`.
func (ns *Namespace) Sysctls(pattern string) (map[string]string, error) {
	p, err := sysctlPath(pattern)
	if err != nil {
		return nil, err
	}
	vals := map[string]string{}
	err = ns.Do(func() error {
		files, err := filepath.Glob(p)
		if err != nil {
			return fmt.Errorf("read sysctls %s: %w", pattern, err)
		}
		for _, f := range files {
			b, err := os.ReadFile(f)
			if errors.Is(err, fs.ErrNotExist) {
				continue
			}
			if err != nil {
				return fmt.Errorf("read sysctl %s: %w", f, err)
			}
			vals[strings.TrimPrefix(f, "/proc/sys/")] = strings.TrimSpace(string(b))
		}
		return nil
	})
	return vals, err
}
