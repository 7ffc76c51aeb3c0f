#!/usr/bin/env bash
# A real kube-apiserver + etcd for the "Kubernetes API" test tier, on a machine without Docker.
# Facts behind every step: ../shared/notes/k8s-api-tier.md (Debian 12, kubernetes 1.20.2 source package).
#
#   apiserver.sh build            build (or find cached) kube-apiserver; exit 3 + "k8s tier: SKIPPED (...)" if impossible
#   apiserver.sh up [OWNER_PID]   start etcd + kube-apiserver on free 127.0.0.1 ports; prints one JSON "ready" line.
#                                 With OWNER_PID (or $NARROWLINK_K8S_OWNER_PID) a reaper tears both down when that
#                                 process dies, so a killed test run never leaves processes behind.
#   apiserver.sh restart DIR      kill -9 the apiserver of DIR and start it again (same port, same etcd, same certs)
#   apiserver.sh down DIR         stop both by pid and remove DIR
#
# Everything human-readable goes to stderr; stdout carries only the JSON line of up/restart.
set -euo pipefail

K8S_VERSION=1.20.2
CACHE_DIR="${NARROWLINK_K8S_CACHE:-$HOME/.cache/narrowlink}"
BIN="$CACHE_DIR/kube-apiserver-$K8S_VERSION"
export DEBIAN_FRONTEND=noninteractive

log() { printf '[k8s] %s\n' "$*" >&2; }
skip() {
  printf 'k8s tier: SKIPPED (%s)\n' "$*"
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
  ensure_pkgs etcd:etcd-server openssl:openssl curl:curl
}

# ---------------------------------------------------------------------------------------------- build
binary_ok() { [ -x "$BIN" ] && "$BIN" --version >/dev/null 2>&1; }

cmd_build() {
  mkdir -p "$CACHE_DIR"
  # One build at a time per cache dir (several suites or engineers may ask at once).
  exec 9>"$CACHE_DIR/.build.lock"
  flock 9
  # The cluster tier's build (test/cluster/cluster.sh build, same recipe) makes kube-apiserver in the same make as
  # the kubelet and the rest: reuse it rather than paying the code generation and the link a second time.
  local cluster_copy="$CACHE_DIR/k8s-$K8S_VERSION/kube-apiserver"
  if ! binary_ok && [ -x "$cluster_copy" ] && "$cluster_copy" --version >/dev/null 2>&1; then
    cp "$cluster_copy" "$BIN.tmp" && mv "$BIN.tmp" "$BIN"
  fi
  if binary_ok; then
    runtime_pkgs
    log "cached: $BIN"
    return 0
  fi
  [ "$(uname -m)" = x86_64 ] || skip "kube-apiserver build is only checked on x86_64, this is $(uname -m)"
  [ -r /etc/os-release ] || skip "not a Debian machine (no /etc/os-release)"
  # shellcheck disable=SC1091
  . /etc/os-release
  [ "${ID:-}" = debian ] || skip "needs Debian's kubernetes source package, this is ${ID:-unknown}"
  local suite="${VERSION_CODENAME:-}"
  [ -n "$suite" ] || skip "cannot tell the Debian release"

  local start=$SECONDS
  ensure_pkgs go:golang-go rsync:rsync make:make dpkg-source:dpkg-dev xz:xz-utils \
    /usr/share/gocode/src/github.com/modern-go/reflect2/reflect2.go:golang-github-modern-go-reflect2-dev
  runtime_pkgs

  local work
  work="$(mktemp -d "$CACHE_DIR/build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'" EXIT

  # Private apt state: a deb-src list for this release only, its own lists and caches, so the system's apt
  # configuration and package lists stay exactly as they were.
  mkdir -p "$work/apt/sources.list.d" "$work/apt/lists/partial" "$work/apt/cache/archives/partial"
  : >"$work/apt/none.list"
  cat >"$work/apt/sources.list.d/kubernetes-src.sources" <<EOF
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: $suite
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
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

  # reflect2 1.0.1 (vendored) builds under Go >= 1.18 but dies in mapiterinit on the first custom-resource
  # create; Debian's 1.0.2 fixes it.
  log "patching vendored reflect2 1.0.1 -> 1.0.2"
  rm -f "$tree"/vendor/github.com/modern-go/reflect2/*.go "$tree"/vendor/github.com/modern-go/reflect2/*.s
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.go "$tree/vendor/github.com/modern-go/reflect2/"
  cp /usr/share/gocode/src/github.com/modern-go/reflect2/*.s "$tree/vendor/github.com/modern-go/reflect2/" 2>/dev/null || true
  rm -f "$tree"/vendor/github.com/modern-go/reflect2/*_test.go

  log "make WHAT=cmd/kube-apiserver (about 3 minutes on 2 cores)"
  (
    cd "$tree"
    export GOPROXY=off CGO_ENABLED=0 GOCACHE="$work/gocache"
    # No .git in a source package: give the version explicitly so /version (and helm's kubeVersion checks) is real.
    export KUBE_GIT_VERSION="v$K8S_VERSION" KUBE_GIT_TREE_STATE=clean KUBE_GIT_MAJOR=1 KUBE_GIT_MINOR=20
    make WHAT=cmd/kube-apiserver >&2
  ) || skip "make WHAT=cmd/kube-apiserver failed (Go $(go env GOVERSION 2>/dev/null || echo '?'))"
  local out
  out="$(find "$tree/_output" -type f -name kube-apiserver -perm -u+x | head -n1)"
  [ -n "$out" ] || skip "build produced no kube-apiserver binary"
  cp "$out" "$BIN.tmp"
  mv "$BIN.tmp" "$BIN"
  binary_ok || skip "built kube-apiserver does not run"
  log "built $BIN in $((SECONDS - start)) s"
}

# ---------------------------------------------------------------------------------------------- up / down
free_port() {
  if command -v python3 >/dev/null 2>&1 && python3 -c 'pass' 2>/dev/null; then
    python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'
  else
    node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'
  fi
}

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
  for i in $(seq 1 "$grace"); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  for i in $(seq 1 20); do
    pid_alive "$pid" || return 0
    sleep 0.1
  done
}

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

start_etcd() {
  local dir="$1"
  local cport pport
  cport="$(free_port)"
  pport="$(free_port)"
  while [ "$pport" = "$cport" ]; do pport="$(free_port)"; done
  rm -rf "$dir/etcd-data"
  nohup etcd --name default --data-dir "$dir/etcd-data" \
    --listen-client-urls "http://127.0.0.1:$cport" --advertise-client-urls "http://127.0.0.1:$cport" \
    --listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
    --initial-cluster "default=http://127.0.0.1:$pport" --initial-cluster-state new \
    --unsafe-no-fsync --log-level warn --logger zap \
    </dev/null >>"$dir/etcd.log" 2>&1 &
  echo $! >"$dir/etcd.pid"
  echo "http://127.0.0.1:$cport" >"$dir/etcd.url"
  local i
  for i in $(seq 1 100); do
    pid_alive "$(cat "$dir/etcd.pid")" || return 1
    if curl -fsS "http://127.0.0.1:$cport/health" 2>/dev/null | grep -q '"health":"true"'; then return 0; fi
    sleep 0.1
  done
  return 1
}

# Starts kube-apiserver with the arguments saved in DIR/apiserver.args and waits for /readyz.
start_apiserver() {
  local dir="$1" port args=()
  port="$(cat "$dir/apiserver.port")"
  mapfile -t args <"$dir/apiserver.args"
  nohup "$BIN" "${args[@]}" </dev/null >>"$dir/apiserver.log" 2>&1 &
  echo $! >"$dir/apiserver.pid"
  local i body
  for i in $(seq 1 600); do
    pid_alive "$(cat "$dir/apiserver.pid")" || return 1
    body="$(curl -sS --max-time 2 -k -H "Authorization: Bearer $(cat "$dir/token")" \
      "https://127.0.0.1:$port/readyz" 2>/dev/null || true)"
    [ "$body" = ok ] && return 0
    sleep 0.1
  done
  return 1
}

ready_line() {
  local dir="$1"
  printf '{"event":"ready","server":%s,"kubeconfig":%s,"token":%s,"caFile":%s,"dir":%s,"etcdPid":%s,"apiserverPid":%s}\n' \
    "$(json_str "https://127.0.0.1:$(cat "$dir/apiserver.port")")" "$(json_str "$dir/kubeconfig")" \
    "$(json_str "$(cat "$dir/token")")" "$(json_str "$dir/ca.crt")" "$(json_str "$dir")" \
    "$(cat "$dir/etcd.pid")" "$(cat "$dir/apiserver.pid")"
}

teardown() {
  local dir="$1"
  [ -d "$dir" ] || return 0
  # The apiserver's graceful shutdown takes seconds and protects nothing here: its etcd data is deleted next.
  [ -f "$dir/apiserver.pid" ] && stop_pid "$(cat "$dir/apiserver.pid")" 0
  [ -f "$dir/etcd.pid" ] && stop_pid "$(cat "$dir/etcd.pid")"
  rm -rf "$dir"
}

cmd_up() {
  local owner="${1:-${NARROWLINK_K8S_OWNER_PID:-}}"
  binary_ok || skip "no kube-apiserver at $BIN (run: $0 build)"
  runtime_pkgs
  local dir attempt
  dir="$(mktemp -d "${TMPDIR:-/tmp}/narrowlink-k8s.XXXXXX")"
  # shellcheck disable=SC2064
  trap "teardown '$dir'" EXIT
  openssl rand -hex 24 >"$dir/token"
  printf '%s,admin,admin-uid,"system:masters"\n' "$(cat "$dir/token")" >"$dir/tokens.csv"
  # More static-token users (token,user,uid,"group1,group2" lines) for tests of authenticated identities.
  if [ -n "${NARROWLINK_K8S_EXTRA_TOKENS:-}" ]; then cat "$NARROWLINK_K8S_EXTRA_TOKENS" >>"$dir/tokens.csv"; fi
  # A client CA: tests sign user certificates with it (CN = user name, O = groups), as kubeadm's CA would.
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -keyout "$dir/client-ca.key" \
    -out "$dir/client-ca.crt" -days 2 -sha256 -subj /CN=narrowlink-test-client-ca \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign 2>/dev/null
  openssl genrsa -out "$dir/sa.key" 2048 2>/dev/null
  mkdir -p "$dir/certs"

  # Ports are picked then bound by another process, so a rare race with a parallel run is retried.
  for attempt in 1 2 3; do
    if start_etcd "$dir"; then break; fi
    log "etcd did not start (attempt $attempt): $(tail -n 3 "$dir/etcd.log" 2>/dev/null)"
    stop_pid "$(cat "$dir/etcd.pid")"
    [ $attempt = 3 ] && { log "etcd failed"; exit 1; }
  done

  local ok=0
  for attempt in 1 2 3; do
    free_port >"$dir/apiserver.port"
    cat >"$dir/apiserver.args" <<EOF
--etcd-servers=$(cat "$dir/etcd.url")
--bind-address=127.0.0.1
--secure-port=$(cat "$dir/apiserver.port")
--insecure-port=0
--cert-dir=$dir/certs
--token-auth-file=$dir/tokens.csv
--client-ca-file=$dir/client-ca.crt
--authorization-mode=RBAC
--service-cluster-ip-range=10.96.0.0/16
--service-account-key-file=$dir/sa.key
--service-account-signing-key-file=$dir/sa.key
--service-account-issuer=https://kubernetes.default.svc.cluster.local
--disable-admission-plugins=ServiceAccount
--profiling=false
--logtostderr=true
--v=0
EOF
    if start_apiserver "$dir"; then ok=1; break; fi
    log "kube-apiserver did not become ready (attempt $attempt): $(tail -n 5 "$dir/apiserver.log" 2>/dev/null)"
    stop_pid "$(cat "$dir/apiserver.pid")"
  done
  [ $ok = 1 ] || { log "kube-apiserver failed"; exit 1; }

  # The self-signed serving cert file is [serving cert, its CA]; clients verify against the CA.
  awk '/BEGIN CERTIFICATE/{n++} n==2' "$dir/certs/apiserver.crt" >"$dir/ca.crt"
  [ -s "$dir/ca.crt" ] || cp "$dir/certs/apiserver.crt" "$dir/ca.crt"
  local server="https://127.0.0.1:$(cat "$dir/apiserver.port")"
  cat >"$dir/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: narrowlink-test
  cluster:
    server: $server
    certificate-authority-data: $(base64 -w0 <"$dir/ca.crt")
users:
- name: admin
  user:
    token: $(cat "$dir/token")
contexts:
- name: narrowlink-test
  context:
    cluster: narrowlink-test
    user: admin
current-context: narrowlink-test
EOF

  if [ -n "$owner" ]; then
    # Reaper: when the owning process goes away without calling down, take everything down with it.
    nohup bash -c '
      while kill -0 "$1" 2>/dev/null && [ -d "$2" ]; do sleep 1; done
      [ -d "$2" ] && exec "$3" down "$2"
    ' reaper "$owner" "$dir" "$(readlink -f "$0")" </dev/null >/dev/null 2>&1 &
    echo $! >"$dir/reaper.pid"
  fi
  trap - EXIT
  ready_line "$dir"
}

cmd_restart() {
  local dir="${1:?usage: $0 restart DIR}"
  [ -f "$dir/apiserver.args" ] || { log "$dir is not an apiserver dir"; exit 2; }
  local pid
  pid="$(cat "$dir/apiserver.pid")"
  if pid_alive "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    while pid_alive "$pid"; do sleep 0.05; done
  fi
  local attempt
  for attempt in 1 2 3 4 5; do
    if start_apiserver "$dir"; then
      ready_line "$dir"
      return 0
    fi
    log "restart attempt $attempt failed: $(tail -n 5 "$dir/apiserver.log" 2>/dev/null)"
    stop_pid "$(cat "$dir/apiserver.pid")"
    sleep 0.5
  done
  exit 1
}

cmd_down() {
  local dir="${1:?usage: $0 down DIR}"
  [ -d "$dir" ] || return 0
  [ -f "$dir/apiserver.args" ] || { log "$dir is not an apiserver dir"; exit 2; }
  local reaper=""
  [ -f "$dir/reaper.pid" ] && reaper="$(cat "$dir/reaper.pid")"
  teardown "$dir"
  # The reaper exits by itself once DIR is gone; do not kill ourselves when the reaper is the caller.
  if [ -n "$reaper" ] && [ "$reaper" != "$$" ] && [ "$reaper" != "$PPID" ]; then
    kill "$reaper" 2>/dev/null || true
  fi
}

case "${1:-}" in
  build) cmd_build ;;
  up) shift; cmd_up "$@" ;;
  restart) shift; cmd_restart "$@" ;;
  down) shift; cmd_down "$@" ;;
  *)
    echo "usage: $0 build | up [OWNER_PID] | restart DIR | down DIR" >&2
    exit 2
    ;;
esac
