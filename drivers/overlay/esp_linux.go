package overlay

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"golang.org/x/sys/unix"

	"github.com/seed53641549/cnm/drivers/overlay/keys"
	"github.com/seed53641549/cnm/osl"
)

// The ESP probe's addresses, on the veth pair between its two namespaces
// (which nothing else can reach: any addresses would do).
var (
	espProbeA = netip.MustParsePrefix("198.18.0.1/30")
	espProbeB = netip.MustParsePrefix("198.18.0.2/30")
)

// espPlainTimeout is how long the probe waits for its plaintext datagram,
// which shows that its namespaces' veth pair carries anything.
const espPlainTimeout = 5 * time.Second

// probeESP finds out whether this kernel carries ESP. In two throwaway
// network namespaces joined by a veth pair it sends one UDP datagram in
// plaintext (which must arrive, or the probe cannot tell), then installs,
// for the pair's addresses, an ESP security association in transport mode
// (AEAD rfc4106(gcm(aes)), a random key) on both sides, an outbound policy
// that requires it on the sender and an inbound one that requires it on
// the receiver (so a datagram that arrives was decrypted), and sends a
// second datagram, waiting up to timeout for it.
//
// The namespaces' files, made in dir, are removed at once: the namespaces
// live only while the probe holds them, and everything in them (veths,
// xfrm states and policies, sockets) goes with them. Nothing is made
// anywhere else.
//
// A kernel that refuses the state or policy, or drops the datagram, gives
// works false with what was seen; an error means the probe could not tell.
//
// Equivalent to, in two namespaces: `ip xfrm state add src A dst B proto
// esp spi S mode transport aead 'rfc4106(gcm(aes))' K 128` on both, `ip
// xfrm policy add src A/32 dst B/32 proto udp dport P dir out tmpl src A
// dst B proto esp spi S mode transport` on A's, the same with `dir in` on
// B's, then a UDP datagram from A to B's port P.
func probeESP(ctx context.Context, dir string, timeout time.Duration) (espAnswer, error) {
	return runESPProbe(ctx, dir, timeout, installESP)
}

// espInstaller sets up ESP for UDP from the probe's first namespace to the
// second's port. A refusal of the kernel is an answer (why, saying what
// the kernel lacks), not an error; an error is a failure to reach the
// kernel at all.
type espInstaller func(nss [2]*osl.Namespace, port uint16) (why string, err error)

// runESPProbe is probeESP with the ESP set-up given (tests give less).
func runESPProbe(ctx context.Context, dir string, timeout time.Duration, install espInstaller) (a espAnswer, retErr error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return a, fmt.Errorf("esp probe: %w", err)
	}
	var nss [2]*osl.Namespace
	defer func() {
		for _, ns := range nss {
			if ns != nil {
				retErr = errors.Join(retErr, ns.Delete())
			}
		}
	}()
	for i := range nss {
		ns, err := hiddenNamespace(ctx, dir)
		if err != nil {
			return a, fmt.Errorf("esp probe: %w", err)
		}
		nss[i] = ns
	}
	const link = "esp0"
	if err := nss[0].AddVeth(ctx, osl.VethSpec{HostName: link, PeerName: link, PeerNS: nss[1]}); err != nil {
		return a, fmt.Errorf("esp probe: %w", err)
	}
	for i, addr := range []netip.Prefix{espProbeA, espProbeB} {
		l, err := nss[i].LinkByName(ctx, link)
		if err != nil {
			return a, fmt.Errorf("esp probe: %w", err)
		}
		if err := nss[i].AddAddress(ctx, l.Index, addr); err != nil {
			return a, fmt.Errorf("esp probe: %w", err)
		}
		if err := nss[i].LinkUp(ctx, l.Index, false); err != nil {
			return a, fmt.Errorf("esp probe: %w", err)
		}
	}

	// Unconnected sockets: each datagram looks its route (and its xfrm
	// policy) up afresh.
	var from, to *net.UDPConn
	if err := nss[0].Do(func() (err error) {
		from, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(espProbeA.Addr(), 0)))
		return err
	}); err != nil {
		return a, fmt.Errorf("esp probe: socket: %w", err)
	}
	defer from.Close()
	if err := nss[1].Do(func() (err error) {
		to, err = net.ListenUDP("udp4", net.UDPAddrFromAddrPort(netip.AddrPortFrom(espProbeB.Addr(), 0)))
		return err
	}); err != nil {
		return a, fmt.Errorf("esp probe: socket: %w", err)
	}
	defer to.Close()
	dst := netip.AddrPortFrom(espProbeB.Addr(), uint16(to.LocalAddr().(*net.UDPAddr).Port))

	// Plaintext first: the pair must carry it, or the probe cannot tell.
	ok, err := sendOne(ctx, from, to, dst, espPlainTimeout)
	if err != nil {
		return a, fmt.Errorf("esp probe: plaintext datagram: %w", err)
	}
	if !ok {
		return a, fmt.Errorf("esp probe: a plaintext datagram between the probe's namespaces was not delivered within %v", espPlainTimeout)
	}

	why, err := install(nss, dst.Port())
	if err != nil {
		return a, fmt.Errorf("esp probe: %w", err)
	}
	if why != "" {
		return espAnswer{why: why}, nil
	}
	ok, err = sendOne(ctx, from, to, dst, timeout)
	if err != nil && ctx.Err() == nil {
		return espAnswer{why: fmt.Sprintf("the kernel drops ESP: xfrm states and policies (ESP, transport mode, %s) install, "+
			"but sending a UDP datagram through them fails: %v", keys.AEAD, err)}, nil
	}
	if err != nil {
		return a, fmt.Errorf("esp probe: datagram through ESP: %w", err)
	}
	if !ok {
		return espAnswer{why: fmt.Sprintf("the kernel drops ESP: xfrm states and policies (ESP, transport mode, %s) install, "+
			"but a UDP datagram sent through them from one namespace to another was not delivered within %v", keys.AEAD, timeout)}, nil
	}
	return espAnswer{works: true}, nil
}

// installESP is the probe's espInstaller: the security association in both
// namespaces, then the policies.
func installESP(nss [2]*osl.Namespace, port uint16) (string, error) {
	var secret [keys.KeySize + 4]byte // key and salt, then 4 bytes for the SPI
	if _, err := rand.Read(secret[:]); err != nil {
		return "", err
	}
	spi := int(binary.BigEndian.Uint32(secret[keys.KeySize:])>>1 | keys.MinSPI) // SPIs below are reserved
	state := &netlink.XfrmState{
		Src: espProbeA.Addr().AsSlice(), Dst: espProbeB.Addr().AsSlice(),
		Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT, Spi: spi, ReplayWindow: 32,
		Aead: &netlink.XfrmStateAlgo{Name: keys.AEAD, Key: secret[:keys.KeySize], ICVLen: keys.ICVBits},
	}
	for _, ns := range nss {
		h, err := xfrmHandleIn(ns)
		if err != nil {
			return "", err
		}
		err = h.XfrmStateAdd(state)
		h.Close()
		if err != nil {
			return fmt.Sprintf("the kernel has no ESP: it refuses an ESP xfrm state (transport mode, %s): %v", keys.AEAD, err), nil
		}
	}
	return installESPPolicies(nss, port, spi)
}

// installESPPolicies installs the probe's policies: UDP from the first
// namespace to the second's port goes out through ESP with spi, and comes
// in only through it.
func installESPPolicies(nss [2]*osl.Namespace, port uint16, spi int) (string, error) {
	src, dst := espProbeA.Addr(), espProbeB.Addr()
	tmpl := netlink.XfrmPolicyTmpl{Src: src.AsSlice(), Dst: dst.AsSlice(), Proto: netlink.XFRM_PROTO_ESP, Mode: netlink.XFRM_MODE_TRANSPORT, Spi: spi}
	for i, dir := range []netlink.Dir{netlink.XFRM_DIR_OUT, netlink.XFRM_DIR_IN} {
		h, err := xfrmHandleIn(nss[i])
		if err != nil {
			return "", err
		}
		err = h.XfrmPolicyAdd(&netlink.XfrmPolicy{
			Src: hostNet(src), Dst: hostNet(dst), Proto: netlink.Proto(unix.IPPROTO_UDP), DstPort: int(port),
			Dir: dir, Tmpls: []netlink.XfrmPolicyTmpl{tmpl},
		})
		h.Close()
		if err != nil {
			return fmt.Sprintf("the kernel has no ESP: it refuses an ESP xfrm policy (dir %s): %v", dir, err), nil
		}
	}
	return "", nil
}

// hostNet returns a as a prefix of its full length.
func hostNet(a netip.Addr) *net.IPNet {
	return &net.IPNet{IP: a.AsSlice(), Mask: net.CIDRMask(a.BitLen(), a.BitLen())}
}

// espResend is how often the probe sends its datagram again while it
// waits: a veth pair just set up drops what it is given until the kernel
// attaches its queueing discipline, which can take up to a second.
const espResend = 50 * time.Millisecond

// sendOne sends a datagram with a random payload from from to dst, again
// every espResend, and reports whether to receives it within timeout
// (datagrams of other payloads are ignored).
func sendOne(ctx context.Context, from, to *net.UDPConn, dst netip.AddrPort, timeout time.Duration) (bool, error) {
	var nonce [16]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return false, err
	}
	deadline := time.Now().Add(timeout)
	buf := make([]byte, 64)
	for {
		if err := ctx.Err(); err != nil {
			return false, err
		}
		if _, err := from.WriteToUDPAddrPort(nonce[:], dst); err != nil {
			return false, err
		}
		wait := time.Now().Add(espResend)
		if wait.After(deadline) {
			wait = deadline
		}
		if d, ok := ctx.Deadline(); ok && d.Before(wait) {
			wait = d
		}
		if err := to.SetReadDeadline(wait); err != nil {
			return false, err
		}
		for {
			n, err := to.Read(buf)
			if errors.Is(err, os.ErrDeadlineExceeded) {
				break
			}
			if err != nil {
				return false, err
			}
			if n == len(nonce) && string(buf[:n]) == string(nonce[:]) {
				return true, nil
			}
		}
		if !time.Now().Before(deadline) {
			return false, ctx.Err()
		}
	}
}

// hiddenNamespace makes a network namespace whose file in dir is removed
// at once: it lives while the returned Namespace is open.
func hiddenNamespace(ctx context.Context, dir string) (*osl.Namespace, error) {
	var b [4]byte
	_, _ = rand.Read(b[:])
	// Named like the driver's namespaces, so that FinishRestore drops one
	// that a crash left behind.
	ns, err := osl.NewNamespace(ctx, filepath.Join(dir, nsPrefix+"esp-probe-"+hex.EncodeToString(b[:])))
	if err != nil {
		return nil, err
	}
	if err := ns.RemoveFile(); err != nil {
		return nil, errors.Join(err, ns.Delete())
	}
	return ns, nil
}

// xfrmHandleIn opens a netlink handle for xfrm requests inside ns.
func xfrmHandleIn(ns *osl.Namespace) (*netlink.Handle, error) {
	fd, err := ns.FD()
	if err != nil {
		return nil, err
	}
	defer unix.Close(fd)
	h, err := netlink.NewHandleAt(netns.NsHandle(fd), unix.NETLINK_XFRM)
	if err != nil {
		return nil, fmt.Errorf("xfrm netlink socket in %s: %w", ns, err)
	}
	return h, nil
}
