//go:build !linux

package cnmtest

import "context"

// firewallLeaks reports nothing: nftables exists on Linux only.
func firewallLeaks(ctx context.Context, h *HostNS) []string { return nil }
