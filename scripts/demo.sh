#!/usr/bin/env bash
# Builds and runs cnm's main demo (examples/bridge), or another example,
# inside a fresh network namespace (unshare --net); the demo then makes its
# own throwaway host namespace inside that. Nothing touches the machine's
# real network.
#
#   sudo ./scripts/demo.sh            # examples/bridge
#   sudo ./scripts/demo.sh macvlan    # examples/macvlan
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/go/bin"

if [ "$(id -u)" -ne 0 ]; then
	echo "scripts/demo.sh: run as root (the demo makes network namespaces): sudo $0" >&2
	exit 1
fi
example=bridge
if [ $# -gt 0 ] && [ -d "examples/$1" ]; then
	example=$1
	shift
fi
mkdir -p bin
go build -o "bin/cnm-demo-$example" "./examples/$example"
# A fresh network namespace (nothing leaves the machine) and a private mount
# namespace (no namespace bind mount can outlive a crashed demo).
exec unshare --net --mount -- sh -c 'mount --make-rprivate / && exec "$@"' sh "bin/cnm-demo-$example" "$@"
