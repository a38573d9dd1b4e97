#!/usr/bin/env bash
# Runs cnm's checks the safe way. It fetches modules and builds first (the
# only steps that need the network), then runs go vet and go test -race
# inside a fresh network namespace (unshare --net) that has nothing but a
# loopback: whatever a test does, no packet can leave the machine.
#
#   sudo ./scripts/test.sh                 # everything
#   sudo ./scripts/test.sh -run Bridge .   # arguments go to go test
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" -ne 0 ]; then
	echo "scripts/test.sh: run as root (tests make network namespaces): sudo $0 $*" >&2
	exit 1
fi

echo "== fetch modules and build"
go mod download
go build ./...
go vet ./...
go test -race -count=1 -run '^$' ./... >/dev/null # compile every test binary now

args=("$@")
if [ ${#args[@]} -eq 0 ]; then
	args=(./...)
fi

echo "== go test -race inside a fresh network and mount namespace"
# GOPROXY=off and -mod=readonly: nothing is fetched from inside. The mount
# namespace is private, so a test that crashes cannot leave a namespace
# bind mount behind on the machine.
exec unshare --net --mount -- env GOPROXY=off GOFLAGS=-mod=readonly sh -c 'mount --make-rprivate / && ip link set lo up && exec go test -race -count=1 "$@"' sh "${args[@]}"
