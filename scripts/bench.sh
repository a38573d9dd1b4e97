#!/usr/bin/env bash
# Runs cnm's benchmark harness (bench/): cnm against the netlink floor and the
# CNI reference bridge plugin, in the same run. It installs the CNI plugins
# (github.com/containernetworking/plugins v1.10.0) into a temporary directory,
# builds the harness, and runs it inside a fresh network namespace
# (unshare --net); the harness makes its own throwaway host namespace there.
# The report goes to stdout and, with the scaling plot, to docs/bench/.
#
#   sudo ./scripts/bench.sh                       # the full run, a few minutes
#   sudo ./scripts/bench.sh -rounds 5 -scale 100  # a quick one; see -help
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" -ne 0 ]; then
	echo "scripts/bench.sh: run as root (the harness makes network namespaces): sudo $0 $*" >&2
	exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "== install the CNI bridge and host-local plugins v1.10.0" >&2
GOBIN="$tmp/cni" go install \
	github.com/containernetworking/plugins/plugins/main/bridge@v1.10.0 \
	github.com/containernetworking/plugins/plugins/ipam/host-local@v1.10.0
echo "== build the harness" >&2
mkdir -p bin
go build -o bin/cnm-bench ./bench
echo "== run (inside unshare --net, files on a private tmpfs as /run is on most hosts)" >&2
unshare --net --mount -- sh -c 'mount --make-rprivate / && mkdir -p "$1" && mount -t tmpfs cnm-bench "$1" && shift && exec "$@"' \
	sh "$tmp/fs" bin/cnm-bench -tmp "$tmp/fs" -cni "$tmp/cni" -out docs/bench "$@"
