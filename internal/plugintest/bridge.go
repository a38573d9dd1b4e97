package plugintest

import (
	"errors"
)

// BridgePlugin is cnm's own bridge driver and default IPAM served as a
// plugin (package plugin/server), with a firewall table of its own in the
// host namespace: the same driver cnm has built in, behind the protocol.
// Start it with StartBridge (Linux only).
type BridgePlugin struct {
	*Server
	closeFW func() error
}

// Close stops serving and deletes the plugin's firewall table.
func (p *BridgePlugin) Close() error {
	return errors.Join(p.Server.Close(), p.closeFW())
}
