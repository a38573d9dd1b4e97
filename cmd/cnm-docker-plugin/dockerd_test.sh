#!/bin/sh
# Run by TestDockerd as PID 1's child in a fresh network, mount and PID
# namespace: nothing here reaches the machine's network, /run or /etc/docker,
# and every process dies with the namespace. $1: a temp dir; $2: the test
# binary, which serves the plugin when CNM_DOCKER_PLUGIN_SOCKET is set.
set -eu
D=$1
PLUGIN=$2
DOCKER="/usr/bin/docker -H unix://$D/docker.sock"
CG=cnm-plugin-test-$$

mount --make-rprivate /
mkdir -p "$D/run" "$D/etc-docker" "$D/data" "$D/exec" "$D/state" "$D/root/bin" "$D/containerd"
mount --bind "$D/run" /run
mkdir -p /etc/docker && mount --bind "$D/etc-docker" /etc/docker
mkdir -p /opt/containerd 2>/dev/null && mount --bind "$D/containerd" /opt/containerd || true
ip link set lo up

fail() { echo "FAIL: $*"; echo "--- dockerd log"; tail -n 30 "$D/dockerd.log" || true; echo "--- plugin log"; cat "$D/plugin.log" || true; exit 1; }
cleanup() {
	$DOCKER rm -f srv >/dev/null 2>&1 || true
	[ -f "$D/docker.pid" ] && kill "$(cat "$D/docker.pid")" 2>/dev/null || true
	sleep 1
	for c in /sys/fs/cgroup/*/$CG /sys/fs/cgroup/$CG; do [ -d "$c" ] && find "$c" -depth -type d -exec rmdir {} \; 2>/dev/null; done
	true
}
trap cleanup EXIT

# The plugin, found by dockerd at its fixed path.
mkdir -p /run/docker/plugins
start_plugin() {
	rm -f /run/docker/plugins/cnm.sock.ready
	CNM_DOCKER_PLUGIN_SOCKET=/run/docker/plugins/cnm.sock CNM_DOCKER_PLUGIN_STATE="$D/state" "$PLUGIN" >>"$D/plugin.log" 2>&1 &
	PLUGIN_PID=$!
	for i in $(seq 50); do grep -q "serving on" "$D/plugin.log" 2>/dev/null && [ -S /run/docker/plugins/cnm.sock ] && return 0; sleep 0.1; done
	fail "plugin did not start"
}
start_plugin

dockerd --data-root "$D/data" --exec-root "$D/exec" --pidfile "$D/docker.pid" -H "unix://$D/docker.sock" \
	--iptables=false --ip6tables=false --bridge=none --cgroup-parent "/$CG" >"$D/dockerd.log" 2>&1 &
for i in $(seq 100); do $DOCKER info >/dev/null 2>&1 && break; sleep 0.2; done
$DOCKER info >/dev/null 2>&1 || fail "dockerd did not start"

# An image without any network: busybox.
cp /bin/busybox "$D/root/bin/busybox"
chroot "$D/root" /bin/busybox --install -s /bin
tar -C "$D/root" -c . | $DOCKER import - bb:latest >/dev/null

$DOCKER network create -d cnm --ipam-driver cnm --subnet 10.99.0.0/24 cnmnet >/dev/null || fail "network create"
$DOCKER run -d --name srv --network cnmnet bb:latest sh -c 'while true; do echo hello-from-srv | nc -l -p 8080; done' >/dev/null || fail "run srv"
IP=$($DOCKER inspect -f '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}' srv)
echo "srv is at $IP"
case "$IP" in 10.99.0.*) ;; *) fail "srv address $IP is not from cnm's pool" ;; esac
ok=
for i in $(seq 20); do
	if out=$($DOCKER run --rm --network cnmnet bb:latest sh -c "nc -w 2 $IP 8080 </dev/null" 2>&1) && [ "$out" = hello-from-srv ]; then ok=1; break; fi
	sleep 0.2
done
[ -n "$ok" ] || fail "no TCP from a second container to srv ($out)"
echo "TCP between two containers: ok"

# The plugin crashes (SIGKILL) and comes back: it takes its state back, and
# dockerd's network works on, for running and new containers alike.
kill -9 "$PLUGIN_PID"; wait "$PLUGIN_PID" 2>/dev/null || true
: >"$D/plugin.log"
start_plugin
echo "plugin killed with SIGKILL and restarted"
ok=
for i in $(seq 20); do
	if out=$($DOCKER run --rm --network cnmnet bb:latest sh -c "nc -w 2 $IP 8080 </dev/null" 2>&1) && [ "$out" = hello-from-srv ]; then ok=1; break; fi
	sleep 0.2
done
[ -n "$ok" ] || fail "no TCP to srv from a container made after the plugin's restart ($out)"
echo "TCP after the plugin's restart: ok"
ip -o link show | grep -q "br-" || fail "no bridge made by the plugin"
rules=$(CNM_DOCKER_PLUGIN_COUNT_RULES="$D/state" "$PLUGIN") || fail "count rules"
[ "$rules" -gt 0 ] || fail "no nftables rule for the network ($rules)"
echo "nftables rules of the plugin while the network exists: $rules"

$DOCKER rm -f srv >/dev/null
$DOCKER network rm cnmnet >/dev/null || fail "network rm"
sleep 0.5
left=$(ip -o link show | awk -F': ' '{print $2}' | grep -v '^lo$' || true)
[ -z "$left" ] || fail "links left after network rm: $left"
rules=$(CNM_DOCKER_PLUGIN_COUNT_RULES="$D/state" "$PLUGIN") || fail "count rules"
[ "$rules" -eq 0 ] || fail "$rules nftables rules left after network rm"
echo "PASS: dockerd drove cnm through the plugin socket; network rm left no link and no rule"
