#!/usr/bin/env bash
# Puts promtool (Prometheus's linter) at ~/.cache/narrowlink/promtool/promtool for test/unit/promtool.test.ts and
# test/unit/dashboard.test.ts, from Debian's `prometheus` package (19 MB download; promtool is not packaged alone).
# Only the promtool binary is unpacked (`apt-get download` + `dpkg-deb -x`), not the package installed: its
# postinst would add a user and start a Prometheus server on :9090, the gateway admin listener's default port.
# Exit 0 when promtool is there (or already on PATH); exit 3 with "promtool: SKIPPED (<reason>)" when the package
# cannot be fetched here (the tests then skip and print the same reason).
set -euo pipefail
dir="$HOME/.cache/narrowlink/promtool"
if command -v promtool >/dev/null || [ -x "$dir/promtool" ]; then exit 0; fi
if ! command -v apt-get >/dev/null || ! command -v dpkg-deb >/dev/null; then
  echo "promtool: SKIPPED (no apt-get/dpkg-deb: not a Debian-based machine)" >&2
  exit 3
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
# apt-get download runs unsandboxed as root here (its _apt user cannot write to $tmp): that warning is expected.
if ! apt-get download prometheus >/dev/null 2>&1; then
  apt-get update -qq >/dev/null 2>&1 || true
  if ! apt-get download prometheus >/dev/null 2>&1; then
    echo "promtool: SKIPPED (apt-get download prometheus failed: no Debian mirror reachable?)" >&2
    exit 3
  fi
fi
dpkg-deb -x prometheus_*.deb root
mkdir -p "$dir"
install -m 0755 root/usr/bin/promtool "$dir/promtool.tmp"
mv "$dir/promtool.tmp" "$dir/promtool"
"$dir/promtool" --version | head -1
