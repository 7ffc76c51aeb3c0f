#!/usr/bin/env bash
# A real single-node Kubernetes 1.20.2 for the "cluster" test tier, on a machine without Docker or systemd:
# containerd (CRI) + CNI bridge + etcd + kube-apiserver + controller-manager + scheduler + kubelet + kube-proxy.
# Facts behind every step: ../shared/notes/real-cluster.md (Debian 12, kubernetes 1.20.2 source package).
#
#   cluster.sh build            build (or find cached) the five binaries, install the runtime packages;
#                               exit 3 + "cluster tier: SKIPPED (...)" when this machine cannot
#   cluster.sh up [OWNER_PID]   start the cluster; prints one JSON "ready" line once the node is Ready. With OWNER_PID
#                               (or $NARROWLINK_CLUSTER_OWNER_PID) a reaper tears it down when that process dies.
#   cluster.sh down [DIR]       stop everything and put the host back as it was (also cleans after a crashed run);
#                               NARROWLINK_CLUSTER_KEEP_LOGS=DIR keeps the daemons' logs there
#   cluster.sh import DIR TAR   import an image archive into the cluster's containerd (k8s.io namespace)
#   cluster.sh pause-image      build (or find cached) localhost/narrowlink-pause:3.2 as a docker-archive tar
#   cluster.sh node-image [NODE] build (or find cached) a minimal image with that Node binary (the tests' workload);
#                               prints {"image","archive"}
#
# Network: everything stays on loopback and on the cluster's own bridge (nlbr0, 10.88.0.1/16). The machine's own
# interface address is never bound, advertised or targeted. DNS: dns.mjs on 10.88.0.1:53 answers Service names
# (<name>.<namespace>.svc.cluster.local); NARROWLINK_CLUSTER_NODE picks the node binary that runs it.
# Everything human-readable goes to stderr; stdout carries only the JSON line of up.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE_ROOT="${NARROWLINK_K8S_CACHE:-$HOME/.cache/narrowlink}"
BIN_DIR="$CACHE_ROOT/k8s-$K8S_VERSION"
# The apiserver tier (test/k8s/apiserver.sh) caches the same recipe's kube-apiserver here; reuse it.
LEGACY_APISERVER="$CACHE_ROOT/kube-apiserver-$K8S_VERSION"
BINARIES=(kube-apiserver kubelet kube-controller-manager kube-scheduler kube-proxy)
SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[cluster] %s\n' "$*" >&2; }
skip() {
  printf 'cluster tier: SKIPPED (%s)\n' "$*"
  exit 3
}

# ---------------------------------------------------------------------------------------------- packages
apt_updated=0
# ensure_pkgs CMD_OR_PATH:PACKAGE ... installs PACKAGE only when CMD_OR_PATH is missing.
ensure_pkgs() {
  local need=() spec probe pkg
  for spec in "$@"; do
    probe="${spec%%:*}"
    pkg="${spec#*:}"
    if [[ "$probe" == /* ]]; then
      [ -e "$probe" ] && continue
    else
      command -v "$probe" >/dev/null 2>&1 && continue
    fi
    need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null 2>&1 || skip "no apt-get to install ${need[*]}"
  [ "$(id -u)" = 0 ] || skip "not root, cannot apt-get install ${need[*]}"
  log "installing ${need[*]}"
  if [ $apt_updated = 0 ]; then
    apt-get update -qq >&2 || true
    apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || skip "apt-get install ${need[*]} failed"
}

runtime_pkgs() {
  ensure_pkgs etcd:etcd-server openssl:openssl curl:curl containerd:containerd runc:runc \
    /usr/lib/cni/bridge:containernetworking-plugins iptables:iptables conntrack:conntrack ip:iproute2 \
    umoci:umoci skopeo:skopeo gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev flock:util-linux
}

# ---------------------------------------------------------------------------------------------- build
binary_ok() { [ -x "$1" ] && "$1" --version 2>/dev/null | grep -q "v$K8S_VERSION"; }

all_binaries_ok() {
  local b
  for b in "${BINARIES[@]}"; do binary_ok "$BIN_DIR/$b" || return 1; done
}

machine_supported() {
  [ "$(id -u)" = 0 ] || skip "the kubelet and containerd need root"
  [ "$(uname -m)" = x86_64 ] || skip "only checked on x86_64, this is $(uname -m)"
  [ -r /etc/os-release ] || skip "not a Debian machine (no /etc/os-release)"
  # shellcheck disable=SC1091
  . /etc/os-release
  [ "${ID:-}" = debian ] || skip "needs Debian's kubernetes source package and containerd, this is ${ID:-unknown}"
  grep -qw overlay /proc/filesystems || modprobe overlay 2>/dev/null || true
  grep -qw overlay /proc/filesystems || skip "no overlay filesystem (containerd's overlayfs snapshotter)"
  # The kubelet 1.20 manages cgroup v1 hierarchies; it needs at least cpu and memory.
  local c
  for c in cpu memory pids; do
    [ -d "/sys/fs/cgroup/$c" ] || skip "no cgroup v1 '$c' hierarchy at /sys/fs/cgroup/$c (kubelet 1.20 needs cgroup v1)"
  done
}

cmd_build() {
  mkdir -p "$BIN_DIR"
  # One build at a time per cache dir (several suites or engineers may ask at once).
  exec 9>"$CACHE_ROOT/.cluster-build.lock"
  flock 9
  machine_supported
  runtime_pkgs
  if ! binary_ok "$BIN_DIR/kube-apiserver" && binary_ok "$LEGACY_APISERVER"; then
    cp "$LEGACY_APISERVER" "$BIN_DIR/kube-apiserver.tmp" && mv "$BIN_DIR/kube-apiserver.tmp" "$BIN_DIR/kube-apiserver"
  fi
  local missing=() b
  for b in "${BINARIES[@]}"; do binary_ok "$BIN_DIR/$b" || missing+=("$b"); done
  if [ ${#missing[@]} -eq 0 ]; then
    log "cached: $BIN_DIR (${BINARIES[*]})"
    return 0
  fi
  # shellcheck disable=SC1091
  . /etc/os-release
  local suite="${VERSION_CODENAME:-}"
  [ -n "$suite" ] || skip "cannot tell the Debian release"

  local start=$SECONDS
  ensure_pkgs go:golang-go rsync:rsync make:make dpkg-source:dpkg-dev xz:xz-utils \
    /usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go:golang-github-modern-go-reflect2-dev

  local work
  work="$(mktemp -d "$CACHE_ROOT/cluster-build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT

  # Private apt state: a deb-src list for this release only, its own lists and caches, so the system's apt
  # configuration and package lists stay exactly as they were.
  mkdir -p "$work/apt/sources.list.d" "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
  : >"$work/apt/none.list"
  cat >"$work/apt/sources.list.d/kubernetes-src.sources" <<SRC
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  local aptopts=(
    -o "Dir::Etc::sourcelist=$work/apt/none.list"
    -o "Dir::Etc::sourceparts=$work/apt/sources.list.d"
    -o "Dir::State::Lists=$work/apt/lists"
    -o "Dir::Cache=$work/apt/cache"
    -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root"
  )
  log "apt-get update (private deb-src list for $suite)"
  apt-get "${aptopts[@]}" update -qq >&2 || skip "apt-get update of the deb-src list failed (offline?)"
  mkdir -p "$work/src"
  log "apt-get source --download-only kubernetes"
  (cd "$work/src" && apt-get "${aptopts[@]}" source --download-only kubernetes >&2) ||
    skip "Debian $suite has no kubernetes source package"
  local dsc
  dsc="$(ls "$work"/src/kubernetes_*.dsc 2>/dev/null | head -n1)"
  [ -n "$dsc" ] || skip "no kubernetes .dsc downloaded"
  case "$(basename "$dsc")" in
    kubernetes_*"$K8S_VERSION"*) ;;
    *) skip "Debian $suite ships $(basename "$dsc" .dsc), not kubernetes $K8S_VERSION" ;;
  esac
  log "unpacking $(basename "$dsc")"
  (cd "$work/src" && dpkg-source --no-check -x "$dsc" tree >&2) || skip "dpkg-source -x failed"
  local tree="$work/src/tree"
  [ -d "$tree/vendor/github.com/modern-go/reflect2" ] || skip "source has no vendored reflect2 (not a 1.20 vendor tree)"

  # reflect2 1.0.1 (vendored) builds under Go >= 1.18 but dies in mapiterinit at run time; Debian's 1.0.2 fixes it.
  log "patching vendored reflect2 1.0.1 -> 1.0.2"
  rm -f "$tree"/vendor/github.com/modern-go/reflect2/*.go "$tree"/vendor/github.com/modern-go/reflect2/*.s
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$tree/vendor/github.com/modern-go/reflect2/"
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$tree/vendor/github.com/modern-go/reflect2/" 2>/dev/null || true
  rm -f "$tree"/vendor/github.com/modern-go/reflect2/*_test.go

  # The pause container's source travels with the cache: pause-image builds it with gcc -static.
  cp "$tree/build/pause/linux/pause.c" "$BIN_DIR/pause.c.tmp" && mv "$BIN_DIR/pause.c.tmp" "$BIN_DIR/pause.c"

  # One make for every missing binary: the ~3 min codegen prelude is paid once.
  local what=() m
  for m in "${missing[@]}"; do what+=("cmd/$m"); done
  log "make WHAT=\"${what[*]}\" (20-30 minutes cold on 2 loaded cores)"
  (
    cd "$tree"
    export GOPROXY=off CGO_ENABLED=0 GOCACHE="$work/gocache"
    # No .git in a source package: give the version explicitly so /version and the node's kubeletVersion are real.
    export KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
    nice -n 5 make WHAT="${what[*]}" >&2
  ) || skip "make WHAT=\"${what[*]}\" failed (Go $(go env GOVERSION 2>/dev/null || echo '?'))"
  local out
  for m in "${missing[@]}"; do
    out="$(find "$tree/_output" -type f -name "$m" -perm -u+x | head -n1)"
    [ -n "$out" ] || skip "build produced no $m binary"
    cp "$out" "$BIN_DIR/$m.tmp"
    mv "$BIN_DIR/$m.tmp" "$BIN_DIR/$m"
    binary_ok "$BIN_DIR/$m" || skip "built $m does not run"
  done
  log "built ${missing[*]} into $BIN_DIR in $((SECONDS - start)) s"
}


# ---------------------------------------------------------------------------------------------- cluster layout
# Fixed by design: the kubelet's port 10250, /var/log/pods, /var/lib/kubelet/device-plugins, /var/lib/cni and
# /run/containerd are host-wide anyway, so there is one cluster per machine, behind LOCK_FILE.
STATE_DIR="${NARROWLINK_CLUSTER_DIR:-/tmp/narrowlink-cluster}"
LOCK_FILE="${NARROWLINK_CLUSTER_LOCK:-/run/lock/narrowlink-cluster.lock}"
BRIDGE=nlbr0
BRIDGE_IP=10.88.0.1
POD_CIDR=10.88.0.0/16
SERVICE_CIDR=10.96.0.0/16
SERVICE_IP=10.96.0.1
APISERVER_PORT=6443
NODE_NAME=narrowlink-node
PAUSE_IMAGE=localhost/narrowlink-pause:3.2
# Pods talk to each other, to the host (the apiserver, NodePorts) and through Services, all on the bridge; anything
# routed off the bridge (the machine's own network) is refused at once instead of leaking out of the machine.
EGRESS_RULE=(FORWARD -i "$BRIDGE" ! -o "$BRIDGE" -m comment --comment "narrowlink cluster tier: pods stay on the bridge" -j REJECT)
# Kernel settings the kubelet (vm.*, kernel.*), the bridge plugin (ip_forward) and kube-proxy (route_localnet,
# bridge-nf) change: saved before up, restored by down.
SYSCTLS=(vm.overcommit_memory vm.panic_on_oom kernel.panic kernel.panic_on_oops kernel.keys.root_maxkeys
  kernel.keys.root_maxbytes net.ipv4.ip_forward net.ipv4.conf.all.route_localnet
  net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables)
# Host paths that a daemon writes whatever its flags say; down removes those that did not exist before up.
FIXED_PATHS=(/var/log/pods /var/log/containers /var/lib/kubelet /var/lib/cni /run/containerd /etc/cni /opt/cni)

# A killed child of ours is re-parented to init, which may reap it late: a zombie counts as gone.
pid_alive() {
  [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null || return 1
  local stat
  stat="$(cat "/proc/$1/stat" 2>/dev/null)" || return 1
  stat="${stat##*) }"
  [ "${stat%% *}" != Z ]
}

# stop_pid PID [GRACE_TENTHS]: SIGTERM, wait GRACE_TENTHS/10 s (default 3 s), then SIGKILL.
stop_pid() {
  local pid="${1:-}" grace="${2:-30}" i
  pid_alive "$pid" || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < grace; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  for ((i = 0; i < 30; i++)); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
}

# stop_daemon NAME [GRACE_TENTHS]: stop the daemon whose pid is in STATE_DIR/run/NAME.pid.
stop_daemon() {
  local f="$STATE_DIR/run/$1.pid"
  [ -f "$f" ] || return 0
  stop_pid "$(cat "$f")" "${2:-30}"
  rm -f "$f"
}

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

# start_daemon NAME CMD...: background, own log, pid file; the lock's fd is not inherited, so a daemon that
# outlives us can never hold the cluster lock.
start_daemon() {
  local name="$1"
  shift
  nohup "$@" </dev/null >>"$STATE_DIR/log/$name.log" 2>&1 8>&- 9>&- &
  echo $! >"$STATE_DIR/run/$name.pid"
}

daemon_alive() { [ -f "$STATE_DIR/run/$1.pid" ] && pid_alive "$(cat "$STATE_DIR/run/$1.pid")"; }

# wait_for TENTHS DAEMON CMD...: poll CMD every 0.1 s; fail early when DAEMON died.
wait_for() {
  local tenths="$1" daemon="$2" i
  shift 2
  for ((i = 0; i < tenths; i++)); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    if [ -n "$daemon" ] && ! daemon_alive "$daemon"; then
      log "$daemon exited; last log lines:"
      tail -n 15 "$STATE_DIR/log/$daemon.log" >&2 || true
      return 1
    fi
    sleep 0.1
  done
  log "timed out waiting for: $*"
  [ -n "$daemon" ] && tail -n 15 "$STATE_DIR/log/$daemon.log" >&2
  return 1
}

# api PATH [CURL_ARGS...]: the admin token goes to curl on stdin (-H @-), never into a process's argv.
api() {
  printf 'Authorization: Bearer %s\n' "$(cat "$STATE_DIR/pki/admin.token")" |
    curl -sS --max-time 5 --cacert "$STATE_DIR/pki/ca.crt" -H @- "https://$BRIDGE_IP:$APISERVER_PORT$1" "${@:2}"
}

ctr_k8s() { ctr -a "$STATE_DIR/containerd/containerd.sock" -n k8s.io "$@"; }

# ---------------------------------------------------------------------------------------------- certificates
# One CA signs the apiserver's serving certificate (valid for every address a client uses: loopback, the bridge,
# the kubernetes Service IP and its names), the apiserver's client certificate towards the kubelet, and the
# kubelet's serving certificate. Components authenticate to the apiserver with static tokens.
make_pki() {
  local p="$STATE_DIR/pki"
  mkdir -p "$p"
  chmod 700 "$p"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$p/ca.key" -out "$p/ca.crt" \
    -days 7 -sha256 -subj /CN=narrowlink-cluster-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  # sign NAME SUBJECT EXTKEYUSAGE [SAN]
  sign() {
    local ext="$p/$1.ext"
    {
      echo "basicConstraints=critical,CA:FALSE"
      echo "keyUsage=critical,digitalSignature,keyEncipherment"
      echo "extendedKeyUsage=$3"
      [ -n "${4:-}" ] && echo "subjectAltName=$4"
    } >"$ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$p/$1.key" -out "$p/$1.csr" \
      -subj "$2" 2>/dev/null
    openssl x509 -req -in "$p/$1.csr" -CA "$p/ca.crt" -CAkey "$p/ca.key" -CAcreateserial -out "$p/$1.crt" \
      -days 7 -sha256 -extfile "$ext" 2>/dev/null
    rm -f "$p/$1.csr" "$ext"
  }
  sign apiserver /CN=kube-apiserver serverAuth \
    "IP:127.0.0.1,IP:$BRIDGE_IP,IP:$SERVICE_IP,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
  sign apiserver-kubelet-client "/O=system:masters/CN=kube-apiserver-kubelet-client" clientAuth
  sign kubelet "/CN=$NODE_NAME" serverAuth "IP:$BRIDGE_IP,IP:127.0.0.1,DNS:$NODE_NAME"
  openssl genrsa -out "$p/sa.key" 2048 2>/dev/null
  local u
  for u in admin node controller-manager scheduler proxy; do openssl rand -hex 24 >"$p/$u.token"; done
  {
    printf '%s,admin,admin-uid,"system:masters"\n' "$(cat "$p/admin.token")"
    printf '%s,system:node:%s,node-uid,"system:nodes"\n' "$(cat "$p/node.token")" "$NODE_NAME"
    printf '%s,system:kube-controller-manager,kcm-uid\n' "$(cat "$p/controller-manager.token")"
    printf '%s,system:kube-scheduler,scheduler-uid\n' "$(cat "$p/scheduler.token")"
    printf '%s,system:kube-proxy,proxy-uid\n' "$(cat "$p/proxy.token")"
  } >"$p/tokens.csv"
  chmod 600 "$p"/*
}

# kubeconfig NAME TOKEN_FILE: write STATE_DIR/NAME.kubeconfig for the bridge address.
kubeconfig() {
  cat >"$STATE_DIR/$1.kubeconfig" <<KC
apiVersion: v1
kind: Config
clusters:
- name: narrowlink-cluster
  cluster:
    server: https://$BRIDGE_IP:$APISERVER_PORT
    certificate-authority-data: $(base64 -w0 <"$STATE_DIR/pki/ca.crt")
users:
- name: $1
  user:
    token: $(cat "$2")
contexts:
- name: narrowlink-cluster
  context:
    cluster: narrowlink-cluster
    user: $1
current-context: narrowlink-cluster
KC
  chmod 600 "$STATE_DIR/$1.kubeconfig"
}

# ---------------------------------------------------------------------------------------------- host state
save_host_state() {
  local h="$STATE_DIR/host" s p
  mkdir -p "$h"
  : >"$h/sysctl"
  for s in "${SYSCTLS[@]}"; do
    p="/proc/sys/${s//.//}"
    [ -r "$p" ] && printf '%s=%s\n' "$s" "$(cat "$p")" >>"$h/sysctl"
  done
  : >"$h/created-paths"
  # Not /run/netns: other suites (the NAT lab) keep namespaces there, and our pods' netns live in STATE_DIR
  # (netns_mounts_under_state_dir).
  for p in "${FIXED_PATHS[@]}"; do
    [ -e "$p" ] || echo "$p" >>"$h/created-paths"
  done
}

restore_host_state() {
  local h="$STATE_DIR/host" line p
  if [ -f "$h/sysctl" ]; then
    while IFS= read -r line; do
      [ -n "$line" ] && sysctl -q -w "$line" >/dev/null 2>&1 || true
    done <"$h/sysctl"
  fi
  if [ -f "$h/created-paths" ]; then
    while IFS= read -r p; do
      [ -n "$p" ] || continue
      # Mounts below a fixed path (a pod's netns under /run/netns, a shim's rootfs) go first.
      { grep -F " $p/" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
      rm -rf "$p"
    done <"$h/created-paths"
  fi
}

# iptables_cleanup: remove every rule that jumps to a KUBE-*/CNI-* chain, then those chains (kubelet, kube-proxy,
# portmap and bridge create them; kube-proxy --cleanup misses the kubelet's). Tables of both families.
iptables_cleanup() {
  local cmd table chain rule
  for cmd in iptables ip6tables; do
    command -v "$cmd" >/dev/null 2>&1 || continue
    for table in filter nat mangle raw; do
      "$cmd" -t "$table" -S >/dev/null 2>&1 || continue
      # Rules in any chain that jump to ours (deleted one by one, from the -S spelling).
      { "$cmd" -t "$table" -S 2>/dev/null || true; } | { grep -E -- '^-A .*-j (KUBE-|CNI-)' || true; } | while IFS= read -r rule; do
        eval "$cmd -t $table ${rule/-A/-D}" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^CNI-/) {print $2}'); do
        "$cmd" -t "$table" -F "$chain" 2>/dev/null || true
      done
      for chain in $("$cmd" -t "$table" -S 2>/dev/null | awk '$1 == "-N" && ($2 ~ /^KUBE-/ || $2 ~ /^CNI-/) {print $2}'); do
        "$cmd" -t "$table" -X "$chain" 2>/dev/null || true
      done
    done
  done
}

# kill_cgroup_procs DIR: SIGKILL every process in the cgroup tree DIR (a container whose shim is gone).
kill_cgroup_procs() {
  local f pid
  while IFS= read -r f; do
    while IFS= read -r pid; do
      [ -n "$pid" ] && kill -KILL "$pid" 2>/dev/null || true
    done <"$f"
  done < <(find "$1" -name cgroup.procs 2>/dev/null)
}

remove_kubepods_cgroups() {
  local d i
  for d in /sys/fs/cgroup/*/kubepods /sys/fs/cgroup/kubepods; do
    [ -d "$d" ] || continue
    kill_cgroup_procs "$d"
    # A killed process leaves its cgroup a moment later: retry the deepest-first rmdir briefly.
    for ((i = 0; i < 50; i++)); do
      find "$d" -depth -type d -exec rmdir {} \; 2>/dev/null || true
      [ -d "$d" ] || break
      sleep 0.1
    done
    [ -d "$d" ] && log "could not remove cgroup $d"
  done
  return 0
}

# ---------------------------------------------------------------------------------------------- teardown
teardown() {
  [ -d "$STATE_DIR" ] || return 0
  local t0=$SECONDS ns
  # 1. Pods: nothing recreates them once the controllers stop; the kubelet then kills them through CRI, which
  # runs CNI DEL (veth, portmap rules, IP release). Bounded: whatever is left is killed below.
  daemon_alive kube-controller-manager && stop_daemon kube-controller-manager
  daemon_alive kube-scheduler && stop_daemon kube-scheduler
  if daemon_alive kube-apiserver && daemon_alive kubelet && [ -f "$STATE_DIR/pki/admin.token" ]; then
    for ns in $(api /api/v1/namespaces 2>/dev/null | grep -o '"name": *"[^"]*"' | sed 's/.*"\([^"]*\)"$/\1/' | sort -u); do
      api "/api/v1/namespaces/$ns/pods" -X DELETE -H 'Content-Type: application/json' \
        -d '{"kind":"DeleteOptions","apiVersion":"v1","gracePeriodSeconds":0}' >/dev/null 2>&1 || true
    done
    local i
    for ((i = 0; i < 150; i++)); do
      api /api/v1/pods 2>/dev/null | grep -q '"items": *\[\]' && break
      sleep 0.2
    done
  fi
  # 2. Daemons that act on the host, then the runtime.
  stop_daemon kubelet
  stop_daemon kube-proxy
  if [ -S "$STATE_DIR/containerd/containerd.sock" ] && daemon_alive containerd; then
    local t c
    for t in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks kill -s SIGKILL "$t" >/dev/null 2>&1 || true; done
    for t in $(ctr_k8s tasks ls -q 2>/dev/null); do ctr_k8s tasks delete -f "$t" >/dev/null 2>&1 || true; done
    for c in $(ctr_k8s containers ls -q 2>/dev/null); do ctr_k8s containers delete "$c" >/dev/null 2>&1 || true; done
  fi
  stop_daemon containerd
  # Shims outlive containerd; ours are the ones started with our socket address.
  local pid
  for pid in $(pgrep -f -- "-address $STATE_DIR/containerd/containerd.sock" 2>/dev/null || true); do
    stop_pid "$pid" 10
  done
  remove_kubepods_cgroups
  stop_daemon dns
  stop_daemon kube-apiserver 0
  stop_daemon etcd
  # Anything else this run started (a daemon added later, a half-started up).
  local f
  for f in "$STATE_DIR"/run/*.pid; do
    [ -f "$f" ] && [ "$f" != "$STATE_DIR/run/reaper.pid" ] && stop_pid "$(cat "$f")" && rm -f "$f"
  done
  # 3. Mounts (pod volumes, netns, rootfs, shm) deepest first, then the network.
  { grep -F " $STATE_DIR/" /proc/mounts || true; } | awk '{print $2}' | sort -r | while read -r m; do umount -l "$m" 2>/dev/null || true; done
  { grep -E ' /run/netns/cni-| /var/run/netns/cni-' /proc/mounts || true; } | awk '{print $2}' | while read -r m; do
    umount -l "$m" 2>/dev/null && rm -f "$m"
  done
  if ip link show "$BRIDGE" >/dev/null 2>&1; then
    local veth
    for veth in $(ip -o link show master "$BRIDGE" 2>/dev/null | awk -F': ' '{print $2}' | cut -d@ -f1); do
      ip link del "$veth" 2>/dev/null || true
    done
    ip link del "$BRIDGE" 2>/dev/null || true
  fi
  while iptables -w 5 -D "${EGRESS_RULE[@]}" 2>/dev/null; do :; done
  iptables_cleanup
  # 4. The host as it was.
  restore_host_state
  # Daemon logs survive the teardown when asked (a failed CI run's evidence).
  if [ -n "${NARROWLINK_CLUSTER_KEEP_LOGS:-}" ] && [ -d "$STATE_DIR/log" ]; then
    mkdir -p "$NARROWLINK_CLUSTER_KEEP_LOGS" && cp -a "$STATE_DIR/log/." "$NARROWLINK_CLUSTER_KEEP_LOGS/" || true
  fi
  local reaper=""
  [ -f "$STATE_DIR/run/reaper.pid" ] && reaper="$(cat "$STATE_DIR/run/reaper.pid")"
  rm -rf "$STATE_DIR"
  if [ -n "$reaper" ] && [ "$reaper" != "$$" ] && [ "$reaper" != "${PPID:-}" ]; then
    kill "$reaper" 2>/dev/null || true
  fi
  log "down in $((SECONDS - t0)) s"
}

# ---------------------------------------------------------------------------------------------- up
write_configs() {
  local d="$STATE_DIR"
  mkdir -p "$d/containerd" "$d/cni/net.d" "$d/cni/ipam" "$d/cni/cache" "$d/kubelet"
  cat >"$d/containerd/config.toml" <<TOML
version = 2
root = "$d/containerd/root"
state = "$d/containerd/state"
oom_score = 0
[grpc]
  address = "$d/containerd/containerd.sock"
[ttrpc]
  address = ""
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "$PAUSE_IMAGE"
  # Root lacks CAP_SYS_RESOURCE here: runc cannot lower oom_score_adj below ours (real-cluster.md, gotcha 1).
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$d/cni/net.d"
    max_conf_num = 1
TOML
  cat >"$d/cni/net.d/10-narrowlink.conflist" <<CNI
{
  "cniVersion": "0.4.0",
  "name": "narrowlink",
  "plugins": [
    {
      "type": "bridge",
      "bridge": "$BRIDGE",
      "isGateway": true,
      "ipMasq": false,
      "hairpinMode": true,
      "ipam": {
        "type": "host-local",
        "dataDir": "$d/cni/ipam",
        "ranges": [[{ "subnet": "$POD_CIDR", "gateway": "$BRIDGE_IP" }]],
        "routes": [{ "dst": "0.0.0.0/0" }]
      }
    },
    { "type": "portmap", "capabilities": { "portMappings": true } }
  ]
}
CNI
  cat >"$d/kubelet/config.yaml" <<KUBELET
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
cgroupDriver: cgroupfs
failSwapOn: false
address: $BRIDGE_IP
port: 10250
readOnlyPort: 0
healthzBindAddress: 127.0.0.1
healthzPort: 10248
tlsCertFile: $d/pki/kubelet.crt
tlsPrivateKeyFile: $d/pki/kubelet.key
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: $d/pki/ca.crt}
authorization: {mode: Webhook}
# Images are imported locally and can never be pulled again: never garbage-collect them.
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
evictionHard: {"memory.available": "100Mi", "nodefs.available": "1%", "imagefs.available": "1%"}
resolvConf: /etc/resolv.conf
# The tier's own DNS (dns.mjs on the bridge address): Services resolve as <name>.<namespace>.svc.cluster.local.
clusterDNS: [$BRIDGE_IP]
clusterDomain: cluster.local
serializeImagePulls: false
KUBELET
}

start_control_plane() {
  local d="$STATE_DIR" p="$STATE_DIR/pki"
  rm -rf "$d/etcd-data"
  local t0=$SECONDS
  start_daemon containerd containerd --config "$d/containerd/config.toml"
  # etcd on fixed loopback ports of its own (one cluster per machine), away from etcd's defaults 2379/2380.
  start_daemon etcd etcd --name default --data-dir "$d/etcd-data" \
    --listen-client-urls http://127.0.0.1:23790 --advertise-client-urls http://127.0.0.1:23790 \
    --listen-peer-urls http://127.0.0.1:23791 --initial-advertise-peer-urls http://127.0.0.1:23791 \
    --initial-cluster default=http://127.0.0.1:23791 --initial-cluster-state new \
    --listen-metrics-urls '' --unsafe-no-fsync --log-level warn --logger zap
  wait_for 100 containerd ctr -a "$d/containerd/containerd.sock" version || return 1
  wait_for 200 etcd sh -c 'curl -fsS http://127.0.0.1:23790/health | grep -q "\"health\":\"true\""' || return 1
  log "containerd + etcd up in $((SECONDS - t0)) s"
  start_daemon kube-apiserver "$BIN_DIR/kube-apiserver" \
    --etcd-servers=http://127.0.0.1:23790 \
    --bind-address="$BRIDGE_IP" --advertise-address="$BRIDGE_IP" --secure-port="$APISERVER_PORT" --insecure-port=0 \
    --tls-cert-file="$p/apiserver.crt" --tls-private-key-file="$p/apiserver.key" \
    --client-ca-file="$p/ca.crt" --token-auth-file="$p/tokens.csv" \
    --kubelet-client-certificate="$p/apiserver-kubelet-client.crt" --kubelet-client-key="$p/apiserver-kubelet-client.key" \
    --kubelet-certificate-authority="$p/ca.crt" --kubelet-preferred-address-types=InternalIP \
    --authorization-mode=Node,RBAC --allow-privileged=true \
    --service-cluster-ip-range="$SERVICE_CIDR" --service-node-port-range=30000-32767 \
    --service-account-key-file="$p/sa.key" --service-account-signing-key-file="$p/sa.key" \
    --service-account-issuer=https://kubernetes.default.svc.cluster.local \
    --enable-aggregator-routing=true --profiling=false --logtostderr=true --v=0
  wait_for 1200 kube-apiserver apiserver_ready || return 1
  log "kube-apiserver ready at $((SECONDS - t0)) s"
  # Cluster DNS: no CoreDNS image can be fetched here, so a small server answers Service names (dns.mjs).
  start_daemon dns "$NODE_BIN" "$SCRIPT_DIR/dns.mjs" "$BRIDGE_IP" 53 "https://$BRIDGE_IP:$APISERVER_PORT" \
    "$p/ca.crt" "$p/admin.token"
  wait_for 100 dns grep -q 'dns: listening' "$d/log/dns.log" || return 1
  start_daemon kube-controller-manager "$BIN_DIR/kube-controller-manager" \
    --kubeconfig="$d/controller-manager.kubeconfig" --authentication-kubeconfig="$d/controller-manager.kubeconfig" \
    --authorization-kubeconfig="$d/controller-manager.kubeconfig" \
    --service-account-private-key-file="$p/sa.key" --root-ca-file="$p/ca.crt" --use-service-account-credentials=true \
    --cluster-signing-cert-file="$p/ca.crt" --cluster-signing-key-file="$p/ca.key" \
    --allocate-node-cidrs=false --leader-elect=false --bind-address=127.0.0.1 --secure-port=10257 --port=0 \
    --profiling=false --v=0
  start_daemon kube-scheduler "$BIN_DIR/kube-scheduler" \
    --kubeconfig="$d/scheduler.kubeconfig" --authentication-kubeconfig="$d/scheduler.kubeconfig" \
    --authorization-kubeconfig="$d/scheduler.kubeconfig" \
    --leader-elect=false --bind-address=127.0.0.1 --secure-port=10259 --port=0 --profiling=false --v=0
  # kube-proxy: NodePorts only on the bridge and loopback addresses (never the machine's own interface); it
  # leaves the conntrack limits alone (0 = do not touch).
  start_daemon kube-proxy "$BIN_DIR/kube-proxy" \
    --kubeconfig="$d/proxy.kubeconfig" --hostname-override="$NODE_NAME" --proxy-mode=iptables \
    --cluster-cidr="$POD_CIDR" --nodeport-addresses="$POD_CIDR,127.0.0.0/8" \
    --bind-address=127.0.0.1 --healthz-bind-address=127.0.0.1:10256 --metrics-bind-address=127.0.0.1:10249 \
    --conntrack-max-per-core=0 --conntrack-min=0 --conntrack-tcp-timeout-established=0 \
    --conntrack-tcp-timeout-close-wait=0 --profiling=false --v=0
  start_daemon kubelet "$BIN_DIR/kubelet" \
    --config="$d/kubelet/config.yaml" --kubeconfig="$d/node.kubeconfig" --root-dir="$d/kubelet" \
    --cert-dir="$d/kubelet/pki" --container-runtime=remote \
    --container-runtime-endpoint="unix://$d/containerd/containerd.sock" --runtime-request-timeout=5m \
    --hostname-override="$NODE_NAME" --node-ip="$BRIDGE_IP" --v=0
}

apiserver_ready() { [ "$(api /readyz 2>/dev/null)" = ok ]; }

node_ready() {
  api "/api/v1/nodes/$NODE_NAME" 2>/dev/null | tr -d ' \n' | grep -q '"type":"Ready","status":"True"'
}

ready_line() {
  local rss=0 f pid kb
  for f in "$STATE_DIR"/run/*.pid; do
    [ "$f" = "$STATE_DIR/run/reaper.pid" ] && continue
    pid="$(cat "$f")"
    kb="$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status" 2>/dev/null || echo 0)"
    rss=$((rss + ${kb:-0}))
  done
  printf '{"event":"ready","dir":%s,"kubeconfig":%s,"apiserverUrl":%s,"caFile":%s,"token":%s,"nodeName":%s,"bridge":%s,"bridgeIp":%s,"podCidr":%s,"serviceCidr":%s,"kubernetesServiceIp":%s,"containerdSocket":%s,"pauseImage":%s,"upSeconds":%s,"daemonsRssKiB":%s}\n' \
    "$(json_str "$STATE_DIR")" "$(json_str "$STATE_DIR/admin.kubeconfig")" \
    "$(json_str "https://$BRIDGE_IP:$APISERVER_PORT")" "$(json_str "$STATE_DIR/pki/ca.crt")" \
    "$(json_str "$(cat "$STATE_DIR/pki/admin.token")")" "$(json_str "$NODE_NAME")" "$(json_str "$BRIDGE")" \
    "$(json_str "$BRIDGE_IP")" "$(json_str "$POD_CIDR")" "$(json_str "$SERVICE_CIDR")" "$(json_str "$SERVICE_IP")" \
    "$(json_str "$STATE_DIR/containerd/containerd.sock")" "$(json_str "$PAUSE_IMAGE")" "$1" "$rss"
}

# The sandbox image: helper-free path first (deploy/build-image.sh builds it with the app image); otherwise
# build it here from the kubernetes source's pause.c (gcc -static, umoci, skopeo), cached by content.
cmd_pause_image() {
  local out="$CACHE_ROOT/images/cluster-tier-pause-3.2.tar"
  if [ -s "$out" ]; then
    echo "$out"
    return 0
  fi
  [ -f "$BIN_DIR/pause.c" ] || skip "no $BIN_DIR/pause.c (run: $0 build)"
  runtime_pkgs
  mkdir -p "$CACHE_ROOT/images"
  local w
  w="$(mktemp -d "$CACHE_ROOT/images/pause.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$w'" RETURN
  gcc -Os -static -DVERSION=v3.2-narrowlink -o "$w/pause" "$BIN_DIR/pause.c" >&2
  strip "$w/pause" 2>/dev/null || true
  (
    cd "$w"
    umoci init --layout oci >&2
    umoci new --image oci:pause >&2
    umoci unpack --rootless --image oci:pause bundle >&2
    install -m 0755 pause bundle/rootfs/pause
    # Fixed timestamps: the same pause.c gives the same layer digest.
    touch -h -d @0 bundle/rootfs/pause bundle/rootfs
    umoci repack --image oci:pause bundle >&2
    umoci config --image oci:pause --config.entrypoint /pause --config.user 65535:65535 \
      --architecture amd64 --os linux --created 1970-01-01T00:00:00Z --history.created 1970-01-01T00:00:00Z >&2
    skopeo copy --quiet "oci:oci:pause" "docker-archive:$w/pause.tar:$PAUSE_IMAGE" >&2
  ) || { log "building the pause image failed"; return 1; }
  mv "$w/pause.tar" "$out"
  echo "$out"
}

# A small image for the tier's own tests: the Node binary this repo runs on plus exactly the shared libraries it
# links (ldd), no distribution. Named localhost/narrowlink-cluster-node:<node version>; cached by version.
cmd_node_image() {
  local node="${1:-$(command -v node)}"
  [ -x "$node" ] || { log "usage: $0 node-image NODE_BINARY"; exit 2; }
  local version
  version="$("$node" --version)"
  local out="$CACHE_ROOT/images/cluster-tier-node-$version.tar"
  if [ -s "$out" ]; then
    printf '{"image":%s,"archive":%s}\n' "$(json_str "localhost/narrowlink-cluster-node:$version")" "$(json_str "$out")"
    return 0
  fi
  runtime_pkgs
  mkdir -p "$CACHE_ROOT/images"
  local w
  w="$(mktemp -d "$CACHE_ROOT/images/node.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$w'" RETURN
  (
    cd "$w"
    umoci init --layout oci >&2
    umoci new --image oci:node >&2
    umoci unpack --rootless --image oci:node bundle >&2
    local r=bundle/rootfs lib
    mkdir -p "$r/usr/local/bin" "$r/tmp" "$r/etc"
    chmod 1777 "$r/tmp"
    install -m 0755 "$node" "$r/usr/local/bin/node"
    for lib in $(ldd "$node" | grep -oE '/[^ ]+\.so[^ ]*'); do
      mkdir -p "$r$(dirname "$lib")"
      cp -L "$lib" "$r$lib"
    done
    echo 'nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin' >"$r/etc/passwd"
    umoci repack --image oci:node bundle >&2
    umoci config --image oci:node --config.entrypoint /usr/local/bin/node --config.user 65534:65534 \
      --config.env PATH=/usr/local/bin:/usr/bin:/bin --architecture amd64 --os linux >&2
    skopeo copy --quiet oci:oci:node "docker-archive:$w/node.tar:localhost/narrowlink-cluster-node:$version" >&2
  ) || { log "building the node test image failed"; return 1; }
  mv "$w/node.tar" "$out"
  printf '{"image":%s,"archive":%s}\n' "$(json_str "localhost/narrowlink-cluster-node:$version")" "$(json_str "$out")"
}

import_archive() {
  ctr -a "$STATE_DIR/containerd/containerd.sock" -n k8s.io images import "$1" >&2
}

cmd_up() {
  local owner="${1:-${NARROWLINK_CLUSTER_OWNER_PID:-}}"
  machine_supported
  NODE_BIN="${NARROWLINK_CLUSTER_NODE:-$(command -v node || true)}"
  [ -x "$NODE_BIN" ] || skip "no node binary for the cluster DNS (set NARROWLINK_CLUSTER_NODE)"
  all_binaries_ok || skip "the cluster binaries are not built in $BIN_DIR (run: $0 build)"
  runtime_pkgs
  local t0 wait_s="${NARROWLINK_CLUSTER_LOCK_WAIT_S:-900}"
  mkdir -p "$(dirname "$LOCK_FILE")"
  exec 8>"$LOCK_FILE"
  if ! flock -n 8; then
    log "another cluster holds $LOCK_FILE; waiting up to $wait_s s"
    flock -w "$wait_s" 8 || { log "another cluster is still up after $wait_s s"; exit 1; }
  fi
  t0=$SECONDS
  # A previous run that died without down (and whose reaper died too) left its state: clean it first.
  if [ -d "$STATE_DIR" ]; then
    log "cleaning up after a previous cluster in $STATE_DIR"
    teardown
  fi
  local pause_tar
  pause_tar="$(cmd_pause_image)" || exit 1
  mkdir -p "$STATE_DIR/run" "$STATE_DIR/log"
  chmod 700 "$STATE_DIR"
  trap 'log "up failed; tearing down"; teardown' EXIT
  save_host_state
  # The bridge exists before anything binds to it: the apiserver and the kubelet listen on its address only.
  ip link add "$BRIDGE" type bridge
  ip addr add "$BRIDGE_IP/16" dev "$BRIDGE"
  ip link set "$BRIDGE" up
  iptables -w 5 -I "${EGRESS_RULE[@]}"
  # Kubernetes networking expects bridged traffic to traverse iptables (a Pod reaching a Service backed by a Pod on
  # the same bridge); restored by down like every other setting.
  [ -w /proc/sys/net/bridge/bridge-nf-call-iptables ] && sysctl -q -w net.bridge.bridge-nf-call-iptables=1 >/dev/null
  make_pki
  kubeconfig admin "$STATE_DIR/pki/admin.token"
  kubeconfig node "$STATE_DIR/pki/node.token"
  kubeconfig controller-manager "$STATE_DIR/pki/controller-manager.token"
  kubeconfig scheduler "$STATE_DIR/pki/scheduler.token"
  kubeconfig proxy "$STATE_DIR/pki/proxy.token"
  write_configs
  start_control_plane || exit 1
  import_archive "$pause_tar" || exit 1
  wait_for 1800 kubelet node_ready || exit 1
  log "node Ready at $((SECONDS - t0)) s"
  wait_for 600 kube-controller-manager api /api/v1/namespaces/default/serviceaccounts/default -f || exit 1
  # Reaper (always): holds the lock for the cluster's lifetime; with an owner pid it tears the cluster down when
  # that process dies, so a killed test run never leaves the host changed.
  nohup bash -c '
    while [ -d "$2" ] && { [ -z "$1" ] || kill -0 "$1" 2>/dev/null; }; do sleep 1; done
    [ -d "$2" ] && exec "$3" down
  ' reaper "$owner" "$STATE_DIR" "$(readlink -f "$0")" </dev/null >/dev/null 2>&1 9>&- &
  echo $! >"$STATE_DIR/run/reaper.pid"
  trap - EXIT
  ready_line "$((SECONDS - t0))"
}

cmd_down() {
  [ -z "${1:-}" ] || [ "$(readlink -f "$1")" = "$(readlink -f "$STATE_DIR")" ] ||
    { log "$1 is not this machine's cluster dir ($STATE_DIR)"; exit 2; }
  teardown
}

cmd_import() {
  [ -n "${1:-}" ] && [ -f "${2:-}" ] || { echo "usage: $0 import DIR ARCHIVE" >&2; exit 2; }
  [ "$(readlink -f "$1")" = "$(readlink -f "$STATE_DIR")" ] || { log "$1 is not the running cluster"; exit 2; }
  daemon_alive containerd || { log "containerd of $STATE_DIR is not running"; exit 1; }
  import_archive "$2"
}

case "${1:-}" in
  build) cmd_build ;;
  up) shift; cmd_up "$@" ;;
  down) shift; cmd_down "$@" ;;
  import) shift; cmd_import "$@" ;;
  pause-image) cmd_pause_image ;;
  node-image) shift; cmd_node_image "$@" ;;
  *)
    echo "usage: $0 build | up [OWNER_PID] | down [DIR] | import DIR ARCHIVE | pause-image | node-image [NODE]" >&2
    exit 2
    ;;
esac
