#!/usr/bin/env bash
# System packages the tests need (Go memberlist peer for gossip interop, shellcheck,
# systemd-analyze, iproute2 for network-namespace tests). Idempotent; skips what is present.
set -euo pipefail
need=()
command -v go >/dev/null 2>&1 || need+=(golang-go)
[ -d /usr/share/gocode/src/github.com/hashicorp/memberlist ] || need+=(golang-github-hashicorp-memberlist-dev)
command -v shellcheck >/dev/null 2>&1 || need+=(shellcheck)
command -v systemd-analyze >/dev/null 2>&1 || need+=(systemd)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
