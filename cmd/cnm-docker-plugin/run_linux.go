package main

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/drivers/bridge"
	"github.com/seed53641549/cnm/firewall"
	"github.com/seed53641549/cnm/internal/mark"
	"github.com/seed53641549/cnm/ipam"
	"github.com/seed53641549/cnm/osl"
	"github.com/seed53641549/cnm/plugin/server"
	"github.com/seed53641549/cnm/store"
)

// run serves until SIGINT or SIGTERM, or until stop is closed (tests).
func run(cfg config, stop <-chan struct{}) error {
	ctx := context.Background()
	owner, err := loadOwner(cfg.state)
	if err != nil {
		return err
	}
	st, err := store.Open(cfg.state)
	if err != nil {
		return fmt.Errorf("state dir %s: %w", cfg.state, err)
	}
	defer st.Close()
	host, err := osl.OpenNamespace(ctx, cfg.hostNS)
	if err != nil {
		return fmt.Errorf("host namespace %s: %w", cfg.hostNS, err)
	}
	defer host.Close()
	fd, err := host.FD()
	if err != nil {
		return err
	}
	fw, err := firewall.New(ctx, fd, owner.Table())
	unix.Close(fd)
	if err != nil {
		return fmt.Errorf("firewall: %w", err)
	}
	defer fw.Close() // the rules stay: dockerd's networks keep working
	drv, err := bridge.New(bridge.Config{HostNS: host, Firewall: fw, Owner: owner})
	if err != nil {
		return err
	}
	alloc, err := ipam.New(ipam.Config{})
	if err != nil {
		return err
	}
	// The networks and endpoints dockerd made before a restart or a crash
	// are taken back from the state dir.
	h, err := server.New(ctx, server.Config{Driver: drv, Allocator: alloc, HostNS: host, Store: st})
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(cfg.socket), 0o755); err != nil {
		return err
	}
	// A socket left by a plugin that died is in the way; anything else is
	// not ours to remove.
	if fi, err := os.Lstat(cfg.socket); err == nil && fi.Mode().Type() == fs.ModeSocket {
		os.Remove(cfg.socket)
	}
	l, err := net.Listen("unix", cfg.socket)
	if err != nil {
		return err
	}
	defer os.Remove(cfg.socket)
	srv := &http.Server{Handler: h}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(l) }()
	fmt.Printf("cnm-docker-plugin %s serving on %s (firewall table %s)\n", owner, cfg.socket, owner.Table())

	sig := make(chan os.Signal, 1)
	signal.Notify(sig, syscall.SIGINT, syscall.SIGTERM)
	defer signal.Stop(sig)
	select {
	case <-sig:
	case <-stop:
	case err := <-done:
		return err
	}
	return srv.Close()
}

// loadOwner reads the plugin's identity from dir, making one the first time.
func loadOwner(dir string) (mark.Owner, error) {
	path := filepath.Join(dir, "id")
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		owner := mark.NewOwner()
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return "", err
		}
		return owner, os.WriteFile(path, []byte(owner+"\n"), 0o600)
	}
	if err != nil {
		return "", err
	}
	owner, err := mark.Parse(strings.TrimSpace(string(data)))
	if err != nil {
		return "", fmt.Errorf("identity in %s: %w", path, err)
	}
	return owner, nil
}
