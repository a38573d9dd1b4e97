package overlay

import "net"

// Helpers for the package's tests: what the driver holds, read without a
// kernel call.

// hasNetwork reports whether network id is recorded (created or restored,
// not deleted).
func (d *Driver) hasNetwork(id string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	_, ok := d.networks[id]
	return ok
}

// knownPeers returns the peers the driver knows of network id, programmed
// or remembered. (Not "peers": that is the field it reads.)
func (d *Driver) knownPeers(id string) []Peer {
	d.peerMu.Lock()
	defer d.peerMu.Unlock()
	var out []Peer
	for ip, e := range d.peers[id] {
		out = append(out, Peer{NetworkID: id, IP: ip, MAC: net.HardwareAddr(e.mac), VTEP: e.vtep})
	}
	return out
}
