// Command cnm-docker-plugin serves cnm's bridge driver and cnm's IPAM to a
// Docker daemon, as a network plugin and an IPAM plugin on one unix socket
// (package plugin/server):
//
//	cnm-docker-plugin -socket /run/docker/plugins/cnm.sock
//	docker network create -d cnm --subnet 10.99.0.0/24 cnmnet
//	docker network create -d cnm --ipam-driver cnm cnmnet2   # cnm's IPAM too
//	docker run --network cnmnet ...
//
// Bridges, veth pairs and nftables rules (table cnm-<id>) are made in the
// network namespace the program runs in (or -hostns), as dockerd's own
// drivers would. The -state directory keeps the plugin's identity and what
// dockerd made through it (networks, endpoints, pools, addresses, in a
// bbolt file): a plugin restarted after a crash takes it all back, running
// containers untouched, and removes what a crash left half made.
//
// Not yet: overlay networks need cnm's overlay driver, which does not exist
// yet.
package main

import (
	"flag"
	"log"
)

func main() {
	socket := flag.String("socket", "/run/docker/plugins/cnm.sock", "unix socket to serve on; dockerd finds <name>.sock in /run/docker/plugins")
	hostNS := flag.String("hostns", "/proc/self/ns/net", "network namespace to make bridges and veth pairs in")
	state := flag.String("state", "/var/lib/cnm-docker-plugin", "directory for the plugin's identity and state")
	flag.Parse()
	if err := run(config{socket: *socket, hostNS: *hostNS, state: *state}, nil); err != nil {
		log.Fatal(err)
	}
}

// config is what the command line sets.
type config struct {
	socket, hostNS, state string
}
