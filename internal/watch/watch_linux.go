package watch

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sync"
	"syscall"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// Watcher runs the watches of [Start] until Close.
type Watcher struct {
	conns []*netlink.Conn
	wg    sync.WaitGroup
}

// Start opens the netlink sockets in cfg.NSFD and reports every change to
// out, from the watcher's own goroutines (one per socket: out must be safe
// for concurrent use and must not block for long). An overrun is reported
// as a Resync change.
func Start(cfg Config, out func(Change)) (*Watcher, error) {
	if cfg.NSFD <= 0 || cfg.Table == "" || out == nil {
		return nil, fmt.Errorf("watch: namespace fd, table and out are required")
	}
	if cfg.Own == nil {
		cfg.Own = func(uint32) bool { return false }
	}
	route, err := dial(cfg, unix.NETLINK_ROUTE,
		1<<(unix.RTNLGRP_LINK-1)|1<<(unix.RTNLGRP_IPV4_NETCONF-1)|1<<(unix.RTNLGRP_IPV6_NETCONF-1)|
			1<<(unix.RTNLGRP_IPV4_IFADDR-1)|1<<(unix.RTNLGRP_IPV6_IFADDR-1))
	if err != nil {
		return nil, fmt.Errorf("watch links: %w", err)
	}
	if err := attachFilter(route); err != nil {
		route.Close()
		return nil, fmt.Errorf("watch links: %w", err)
	}
	nft, err := dial(cfg, unix.NETLINK_NETFILTER, 1<<(unix.NFNLGRP_NFTABLES-1))
	if err != nil {
		route.Close()
		return nil, fmt.Errorf("watch nftables: %w", err)
	}
	w := &Watcher{conns: []*netlink.Conn{route, nft}}
	w.wg.Add(2)
	go w.loop(route, out, func(typ uint16, _ uint32, data []byte) (Change, bool) { return parseRoute(typ, data) })
	go w.loop(nft, out, func(typ uint16, pid uint32, data []byte) (Change, bool) { return parseNftables(typ, pid, data, cfg) })
	return w, nil
}

func dial(cfg Config, family int, groups uint32) (*netlink.Conn, error) {
	c, err := netlink.Dial(family, &netlink.Config{Groups: groups, NetNS: cfg.NSFD})
	if err != nil {
		return nil, err
	}
	if cfg.RecvBuffer > 0 {
		if err := c.SetReadBuffer(cfg.RecvBuffer); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
	// A large buffer, beyond net.core.rmem_max (the caller is privileged):
	// the announcements of the caller's own bursts (a join that publishes
	// a thousand ports) must not overrun the socket, which would cost a
	// check of everything.
	raw, err := c.SyscallConn()
	if err == nil {
		cerr := raw.Control(func(fd uintptr) {
			err = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_RCVBUFFORCE, recvBuffer)
		})
		err = errors.Join(cerr, err)
	}
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("set receive buffer: %w", err)
	}
	return c, nil
}

// attachFilter attaches a socket filter that drops, in the kernel, what
// can be no damage, so that the watcher never wakes up for it:
//   - the netconf announcements of single devices (every new link makes
//     one per family), keeping those of the host-wide switches
//     (NETCONFA_IFINDEX_ALL), which the kernel puts first;
//   - new addresses (only a deleted one can be damage);
//   - the bridge family's view of a port (its STP state, announced at every
//     join; a deletion when the port leaves its bridge, though the link
//     stays): the link's own announcements say what matters.
func attachFilter(c *netlink.Conn) error {
	// BPF loads are big endian; netlink fields are in host order.
	be16 := func(v uint16) uint32 {
		return uint32(binary.BigEndian.Uint16(binary.NativeEndian.AppendUint16(nil, v)))
	}
	be32 := func(v uint32) uint32 { return binary.BigEndian.Uint32(binary.NativeEndian.AppendUint32(nil, v)) }
	const (
		ldb       = unix.BPF_LD | unix.BPF_B | unix.BPF_ABS
		ldh       = unix.BPF_LD | unix.BPF_H | unix.BPF_ABS
		ldw       = unix.BPF_LD | unix.BPF_W | unix.BPF_ABS
		jeq       = unix.BPF_JMP | unix.BPF_JEQ | unix.BPF_K
		ret       = unix.BPF_RET | unix.BPF_K
		offTyp    = 4                     // nlmsghdr.nlmsg_type
		offAtt    = unix.NLMSG_HDRLEN + 4 // first attribute, after the netconfmsg
		offFamily = unix.NLMSG_HDRLEN     // ifinfomsg.ifi_family
	)
	// Jumps count the instructions to skip: the comments name the target.
	filter := []unix.SockFilter{
		/* 0 */ {Code: ldh, K: offTyp},
		/* 1 */ {Code: jeq, K: be16(unix.RTM_NEWADDR), Jt: 10, Jf: 0}, // a new address: drop (12)
		/* 2 */ {Code: jeq, K: be16(unix.RTM_NEWNETCONF), Jt: 0, Jf: 4}, // not netconf: a link? (7)
		/* 3 */ {Code: ldh, K: offAtt + 2}, // the attribute's type
		/* 4 */ {Code: jeq, K: be16(netconfaIfindex), Jt: 0, Jf: 6}, // not the index first: keep (11)
		/* 5 */ {Code: ldw, K: offAtt + 4}, // the index
		/* 6 */ {Code: jeq, K: be32(uint32(0xffffffff)), Jt: 4, Jf: 5}, // NETCONFA_IFINDEX_ALL: keep (11), else drop (12)
		/* 7 */ {Code: jeq, K: be16(unix.RTM_NEWLINK), Jt: 1, Jf: 0}, // a link: its family (9)
		/* 8 */ {Code: jeq, K: be16(unix.RTM_DELLINK), Jt: 0, Jf: 2}, // anything else: keep (11)
		/* 9 */ {Code: ldb, K: offFamily},
		/* 10 */ {Code: jeq, K: unix.AF_BRIDGE, Jt: 1, Jf: 0}, // the bridge's view: drop (12)
		/* 11 */ {Code: ret, K: 0xffffffff},
		/* 12 */ {Code: ret, K: 0},
	}
	prog := unix.SockFprog{Len: uint16(len(filter)), Filter: &filter[0]}
	raw, err := c.SyscallConn()
	if err != nil {
		return err
	}
	var serr error
	err = raw.Control(func(fd uintptr) {
		serr = unix.SetsockoptSockFprog(int(fd), unix.SOL_SOCKET, unix.SO_ATTACH_FILTER, &prog)
	})
	return errors.Join(err, serr)
}

// recvBuffer is the watchers' socket receive buffer (the kernel doubles
// it for its bookkeeping).
const recvBuffer = 8 << 20

// loop receives until the socket is closed. It reads each datagram into
// one reused buffer with a single recvfrom: a join announces a dozen link
// changes, and the watcher's cost is on every join.
func (w *Watcher) loop(c *netlink.Conn, out func(Change), parse func(typ uint16, pid uint32, data []byte) (Change, bool)) {
	defer w.wg.Done()
	raw, err := c.SyscallConn()
	if err != nil {
		return
	}
	buf := make([]byte, 64<<10)
	for {
		var (
			n    int
			rerr error
		)
		err := raw.Read(func(fd uintptr) bool {
			n, _, rerr = unix.Recvfrom(int(fd), buf, 0)
			return rerr != unix.EAGAIN
		})
		switch {
		case err != nil:
			return // closed
		case errors.Is(rerr, unix.ENOBUFS):
			out(Change{Kind: Resync})
			continue
		case errors.Is(rerr, unix.EINTR):
			continue
		case rerr != nil:
			return
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, m := range msgs {
			if ch, ok := parse(m.Header.Type, m.Header.Pid, m.Data); ok {
				out(ch)
			}
		}
	}
}

// Close stops the watches and waits for their goroutines.
func (w *Watcher) Close() error {
	var errs []error
	for _, c := range w.conns {
		errs = append(errs, c.Close())
	}
	w.wg.Wait()
	return errors.Join(errs...)
}

// From linux/netconf.h, which x/sys/unix does not carry.
const (
	netconfaIfindex    = 1
	netconfaForwarding = 2
	netconfIfindexAll  = -1
)

// parseRoute reads a link or netconf announcement.
func parseRoute(typ uint16, data []byte) (Change, bool) {
	switch typ {
	case unix.RTM_NEWLINK, unix.RTM_DELLINK:
		const ifinfomsgLen = 16
		if len(data) < ifinfomsgLen {
			return Change{}, false
		}
		ch := Change{
			Kind:    Link,
			Index:   int(int32(binary.NativeEndian.Uint32(data[4:8]))),
			Up:      binary.NativeEndian.Uint32(data[8:12])&unix.IFF_UP != 0,
			Deleted: typ == unix.RTM_DELLINK,
		}
		ad, err := netlink.NewAttributeDecoder(data[ifinfomsgLen:])
		if err != nil {
			return ch, true
		}
		for ad.Next() {
			switch ad.Type() {
			case unix.IFLA_IFNAME:
				ch.Name = ad.String()
			case unix.IFLA_MASTER:
				ch.Master = int(ad.Uint32())
			}
		}
		return ch, true
	case unix.RTM_DELADDR:
		// An address deleted from a link: reported as a change of the link.
		const ifaddrmsgLen = 8
		if len(data) < ifaddrmsgLen {
			return Change{}, false
		}
		return Change{Kind: Address, Index: int(binary.NativeEndian.Uint32(data[4:8]))}, true
	case unix.RTM_NEWNETCONF:
		const netconfmsgLen = 4 // one byte of family, padded
		if len(data) < netconfmsgLen {
			return Change{}, false
		}
		ch := Change{Kind: Forwarding, IPv6: data[0] == unix.AF_INET6}
		ifindex, forwarding := 0, -1
		ad, err := netlink.NewAttributeDecoder(data[netconfmsgLen:])
		if err != nil {
			return Change{}, false
		}
		for ad.Next() {
			switch ad.Type() {
			case netconfaIfindex:
				ifindex = int(int32(ad.Uint32()))
			case netconfaForwarding:
				forwarding = int(ad.Uint32())
			}
		}
		if ifindex != netconfIfindexAll || forwarding < 0 {
			return Change{}, false
		}
		ch.On = forwarding != 0
		return ch, true
	}
	return Change{}, false
}

// parseNftables reports a change to the watched table made by a socket
// that is not ours. Every nf_tables object message carries its table's
// name as attribute 1 (NFTA_TABLE_NAME, NFTA_CHAIN_TABLE, NFTA_RULE_TABLE,
// NFTA_SET_TABLE, NFTA_SET_ELEM_LIST_TABLE).
func parseNftables(typ uint16, pid uint32, data []byte, cfg Config) (Change, bool) {
	if typ>>8 != unix.NFNL_SUBSYS_NFTABLES {
		return Change{}, false
	}
	switch typ & 0xff {
	case unix.NFT_MSG_NEWTABLE, unix.NFT_MSG_DELTABLE,
		unix.NFT_MSG_NEWCHAIN, unix.NFT_MSG_DELCHAIN,
		unix.NFT_MSG_NEWRULE, unix.NFT_MSG_DELRULE,
		unix.NFT_MSG_NEWSET, unix.NFT_MSG_DELSET,
		unix.NFT_MSG_NEWSETELEM, unix.NFT_MSG_DELSETELEM:
	default:
		return Change{}, false
	}
	const nfgenmsgLen = 4
	if len(data) < nfgenmsgLen || data[0] != unix.NFPROTO_INET {
		return Change{}, false
	}
	if cfg.Own(pid) {
		return Change{}, false
	}
	ad, err := netlink.NewAttributeDecoder(data[nfgenmsgLen:])
	if err != nil {
		return Change{}, false
	}
	ad.ByteOrder = binary.BigEndian
	for ad.Next() {
		if ad.Type() == 1 {
			return Change{Kind: Firewall}, ad.String() == cfg.Table
		}
	}
	return Change{}, false
}
