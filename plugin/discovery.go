package plugin

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/url"
	"os"
	"path/filepath"
	"strings"

	"github.com/seed53641549/cnm/errdefs"
)

// Docker's plugin directories, used when [Discovery] leaves its own empty.
const (
	DefaultSocketDir = "/run/docker/plugins"
	DefaultSpecDir   = "/etc/docker/plugins"
	DefaultLibDir    = "/usr/lib/docker/plugins"
)

// maxSpecFile bounds the size of a .spec or .json file read.
const maxSpecFile = 64 << 10

// Spec says where a plugin listens.
type Spec struct {
	Name string
	// Network is "unix" (Address is a socket path) or "tcp" (Address is
	// host:port; plain HTTP, no TLS).
	Network string
	Address string
	// Source is the file the plugin was found by (its socket, or its spec
	// file); empty for an address given directly.
	Source string
}

// ParseAddress parses a plugin address as spec files and [cnm.WithPlugin]
// give it: "unix:///path/x.sock", an absolute socket path, or
// "tcp://host:port". Anything else is an error wrapping errdefs.ErrInvalid
// naming the address; TLS ("https://") is errdefs.ErrNotSupported.
func ParseAddress(name, addr string) (Spec, error) {
	addr = strings.TrimSpace(addr)
	if strings.HasPrefix(addr, "/") {
		return Spec{Name: name, Network: "unix", Address: filepath.Clean(addr)}, nil
	}
	u, err := url.Parse(addr)
	if err != nil {
		return Spec{}, fmt.Errorf("%w: plugin %q: address %q: %w", errdefs.ErrInvalid, name, addr, err)
	}
	switch u.Scheme {
	case "unix":
		p := u.Path
		if u.Host != "" || !strings.HasPrefix(p, "/") {
			return Spec{}, fmt.Errorf("%w: plugin %q: address %q: a unix address needs an absolute path, unix:///path", errdefs.ErrInvalid, name, addr)
		}
		return Spec{Name: name, Network: "unix", Address: filepath.Clean(p)}, nil
	case "tcp", "http":
		if u.Host == "" || (u.Path != "" && u.Path != "/") {
			return Spec{}, fmt.Errorf("%w: plugin %q: address %q: want tcp://host:port", errdefs.ErrInvalid, name, addr)
		}
		return Spec{Name: name, Network: "tcp", Address: u.Host}, nil
	case "https":
		return Spec{}, fmt.Errorf("%w: plugin %q: address %q: TLS", errdefs.ErrNotSupported, name, addr)
	}
	return Spec{}, fmt.Errorf("%w: plugin %q: address %q: want unix:///path, /path or tcp://host:port", errdefs.ErrInvalid, name, addr)
}

// ValidName checks a plugin name: it becomes a file name, so it must be
// non-empty, at most 255 bytes, and hold no path separator, no NUL, and not
// be "." or "..". The error wraps errdefs.ErrInvalid and names the value.
func ValidName(name string) error {
	if name == "" || len(name) > 255 || name == "." || name == ".." || strings.ContainsAny(name, "/\\\x00") {
		return fmt.Errorf("%w: plugin name %q: want a file name (no /, not . or ..)", errdefs.ErrInvalid, name)
	}
	return nil
}

// Discovery finds plugins by name in directories, as Docker does. The zero
// value uses Docker's directories. It reads the file system at every
// Lookup and keeps nothing, so it is safe for concurrent use.
type Discovery struct {
	// SocketDirs hold unix sockets <name>.sock or <name>/<name>.sock.
	// Nil: [DefaultSocketDir].
	SocketDirs []string
	// SpecDirs hold <name>.spec (one line: the address) or <name>.json
	// ({"Name": ..., "Addr": ...}), directly or in a <name>/ folder. Nil:
	// [DefaultSpecDir], then [DefaultLibDir].
	SpecDirs []string
}

func (d Discovery) socketDirs() []string {
	if d.SocketDirs == nil {
		return []string{DefaultSocketDir}
	}
	return d.SocketDirs
}

func (d Discovery) specDirs() []string {
	if d.SpecDirs == nil {
		return []string{DefaultSpecDir, DefaultLibDir}
	}
	return d.SpecDirs
}

// Lookup finds the plugin called name: the first socket in the socket
// directories, else the first spec file in the spec directories. A plugin
// found nowhere is an error wrapping errdefs.ErrNotFound that lists where it
// looked; a spec file that cannot be used one wrapping errdefs.ErrInvalid
// naming the file.
func (d Discovery) Lookup(name string) (Spec, error) {
	if err := ValidName(name); err != nil {
		return Spec{}, err
	}
	for _, dir := range d.socketDirs() {
		for _, p := range []string{filepath.Join(dir, name+".sock"), filepath.Join(dir, name, name+".sock")} {
			fi, err := os.Stat(p)
			if err == nil && fi.Mode().Type() == fs.ModeSocket {
				return Spec{Name: name, Network: "unix", Address: p, Source: p}, nil
			}
		}
	}
	for _, dir := range d.specDirs() {
		for _, base := range []string{dir, filepath.Join(dir, name)} {
			for _, ext := range []string{".spec", ".json"} {
				p := filepath.Join(base, name+ext)
				s, err := readSpec(name, p, ext == ".json")
				if errors.Is(err, fs.ErrNotExist) {
					continue
				}
				return s, err
			}
		}
	}
	return Spec{}, fmt.Errorf("%w: plugin %q: no socket %s.sock in %v, no %s.spec or %s.json in %v",
		errdefs.ErrNotFound, name, name, d.socketDirs(), name, name, d.specDirs())
}

// readSpec reads a .spec or .json file.
func readSpec(name, path string, isJSON bool) (Spec, error) {
	f, err := os.Open(path)
	if err != nil {
		return Spec{}, err
	}
	defer f.Close()
	buf, err := io.ReadAll(io.LimitReader(f, maxSpecFile+1))
	n := len(buf)
	if err != nil {
		return Spec{}, fmt.Errorf("plugin %q: read %s: %w", name, path, err)
	}
	if n > maxSpecFile {
		return Spec{}, fmt.Errorf("%w: plugin %q: %s is larger than %d bytes", errdefs.ErrInvalid, name, path, maxSpecFile)
	}
	addr := string(buf[:n])
	if isJSON {
		var js struct {
			Name      string
			Addr      string
			TLSConfig *struct {
				InsecureSkipVerify bool
				CAFile, CertFile   string
				KeyFile            string
			}
		}
		if err := json.Unmarshal(buf[:n], &js); err != nil {
			return Spec{}, fmt.Errorf("%w: plugin %q: %s: %w", errdefs.ErrInvalid, name, path, err)
		}
		if js.TLSConfig != nil {
			return Spec{}, fmt.Errorf("%w: plugin %q: %s: TLSConfig", errdefs.ErrNotSupported, name, path)
		}
		addr = js.Addr
	}
	s, err := ParseAddress(name, addr)
	if err != nil {
		return Spec{}, fmt.Errorf("%s: %w", path, err)
	}
	s.Source = path
	return s, nil
}

// Locator returns a [Locator] that looks name up at every call, so a client
// follows the plugin if it moves.
func (d Discovery) Locator(name string) Locator {
	return func() (Spec, error) { return d.Lookup(name) }
}
