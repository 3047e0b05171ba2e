#!/bin/bash
# Installs an oklog node under systemd on any Linux host (bare metal, VMs, other clouds).
#
#   sudo infra/install.sh --mode store --peer 10.0.0.5 --peer 10.0.0.6 --advertise 10.0.0.7
#
# Writes /etc/systemd/system/oklog.service (the same unit the EC2 user data installs), the
# environment file /etc/oklog/oklog.env with the mode and flags, and, for a data dir other than
# /var/lib/oklog, a drop-in that makes it writable; creates the `oklog` system user; then enables
# and starts the service. The `oklog` binary must already be on PATH (npm install -g <release.tgz>).
set -euo pipefail

usage() {
  cat <<'EOF'
USAGE
  install.sh --mode ingest|store|ingeststore [options]

OPTIONS
  --mode MODE                 node mode (required)
  --peer HOST[:PORT]          cluster peer, repeatable (port defaults to 7659)
  --advertise IP              -cluster.advertise-addr (default: the node picks a private address)
  --data DIR                  data directory (default /var/lib/oklog)
  --replication-factor N      -store.segment-replication-factor (default 2; 1 for an
                              ingeststore without peers)
  --retain DURATION           -store.segment-retain (default 168h)
  --cluster-key FILE          -cluster.key, gossip encryption key file
  --flags "FLAGS"             extra oklog flags, appended verbatim
  --user NAME                 service user (default oklog)
  --root DIR                  install under DIR instead of / (no user, no systemctl)
  --no-start                  write the files but do not enable/start the service
  --dry-run                   print what would be written and run; change nothing
  -h, --help                  this text
EOF
}

die() {
  echo "install.sh: $*" >&2
  exit 2
}

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
mode="" advertise="" data=/var/lib/oklog rf="" retain=168h key="" extra="" user=oklog
root=/ dry_run=0 start=1
peers=()
while [ $# -gt 0 ]; do
  case "$1" in
  --mode) mode="${2:-}" && shift ;;
  --peer) peers+=("${2:-}") && shift ;;
  --advertise) advertise="${2:-}" && shift ;;
  --data) data="${2:-}" && shift ;;
  --replication-factor) rf="${2:-}" && shift ;;
  --retain) retain="${2:-}" && shift ;;
  --cluster-key) key="${2:-}" && shift ;;
  --flags) extra="${2:-}" && shift ;;
  --user) user="${2:-}" && shift ;;
  --root) root="${2:-}" && shift ;;
  --no-start) start=0 ;;
  --dry-run) dry_run=1 ;;
  -h | --help) usage && exit 0 ;;
  *) usage >&2 && die "unknown argument: $1" ;;
  esac
  shift
done

case "$mode" in
ingest | store | ingeststore) ;;
*) usage >&2 && die "--mode must be ingest, store or ingeststore" ;;
esac
[[ "$data" == /* ]] || die "--data must be an absolute path"
if [ -z "$rf" ]; then
  rf=2
  [ "$mode" != ingeststore ] || [ ${#peers[@]} -gt 0 ] || rf=1
fi
[[ "$rf" =~ ^[1-9][0-9]*$ ]] || die "--replication-factor must be a positive integer"
for value in "$data" "$advertise" "$retain" "$key" "$extra" "${peers[@]}"; do
  [[ "$value" != *[\"\$\`\\]* ]] || die "quotes, \$, backquotes and backslashes are not allowed: $value"
done

flags="-api tcp://0.0.0.0:7650 -cluster tcp://0.0.0.0:7659"
[ -z "$advertise" ] || flags+=" -cluster.advertise-addr $advertise"
for peer in "${peers[@]}"; do
  [ -n "$peer" ] || die "--peer needs a value"
  [[ "$peer" == *:* ]] || peer="$peer:7659"
  flags+=" -peer $peer"
done
case "$mode" in
ingest | ingeststore) flags+=" -ingest.path $data/ingest" ;;
esac
case "$mode" in
store | ingeststore) flags+=" -store.path $data/store -store.segment-replication-factor $rf -store.segment-retain $retain" ;;
esac
[ -z "$key" ] || flags+=" -cluster.key $key"
[ -z "$extra" ] || flags+=" $extra"

r="${root%/}"
unit_src="$here/systemd/oklog.service"
unit_dst="$r/etc/systemd/system/oklog.service"
env_dst="$r/etc/oklog/oklog.env"
dropin_dst="$r/etc/systemd/system/oklog.service.d/data-dir.conf"
[ -f "$unit_src" ] || die "unit file not found: $unit_src"

env_text="# Written by oklog install.sh.
OKLOG_MODE=$mode
OKLOG_FLAGS=\"$flags\""
dropin_text=""
if [ "$data" != /var/lib/oklog ]; then
  dropin_text="[Unit]
RequiresMountsFor=$data

[Service]
ReadWritePaths=$data
WorkingDirectory=$data"
fi

if [ "$dry_run" = 1 ]; then
  echo "# would install $unit_src -> $unit_dst"
  echo "# would write $env_dst:"
  echo "$env_text"
  if [ -n "$dropin_text" ]; then
    echo "# would write $dropin_dst:"
    echo "$dropin_text"
  fi
  if [ "$root" = / ]; then
    echo "# would run: useradd --system $user; mkdir -p $data; chown $user:$user $data"
    [ "$start" = 0 ] || echo "# would run: systemctl daemon-reload && systemctl enable --now oklog.service"
  fi
  exit 0
fi

if [ "$root" = / ]; then
  [ "$(id -u)" = 0 ] || die "run as root (or use --root DIR / --dry-run)"
  # Check before changing anything, so a host without systemd is not left half-installed.
  [ "$start" = 0 ] || [ -d /run/systemd/system ] || die "systemd is not running here; use --no-start"
  if command -v oklog >/dev/null 2>&1; then
    # Builds the start-up bundle (cli/launch.js) while we may still write the package's
    # directory; the service user may not, and would then start through the slower tsx path.
    oklog -h >/dev/null 2>&1 || true
  else
    echo "install.sh: warning: oklog is not on PATH yet" >&2
  fi
  id -u "$user" >/dev/null 2>&1 ||
    useradd --system --home-dir "$data" --no-create-home --shell /usr/sbin/nologin "$user"
fi

install -d -m 0755 "$(dirname "$unit_dst")" "$(dirname "$env_dst")"
install -m 0644 "$unit_src" "$unit_dst"
printf '%s\n' "$env_text" >"$env_dst.tmp"
chmod 0644 "$env_dst.tmp"
mv "$env_dst.tmp" "$env_dst"
if [ -n "$dropin_text" ]; then
  install -d -m 0755 "$(dirname "$dropin_dst")"
  printf '%s\n' "$dropin_text" >"$dropin_dst"
else
  rm -f "$dropin_dst"
fi
if [ "$user" != oklog ]; then
  install -d -m 0755 "$(dirname "$dropin_dst")"
  printf '[Service]\nUser=%s\nGroup=%s\n' "$user" "$user" >"$(dirname "$dropin_dst")/user.conf"
fi

if [ "$root" = / ]; then
  install -d -m 0750 -o "$user" -g "$user" "$data"
  if [ "$start" = 1 ]; then
    systemctl daemon-reload
    systemctl enable oklog.service
    systemctl restart oklog.service
    echo "oklog $mode started; check with: systemctl status oklog && curl -fsS http://127.0.0.1:7650/health"
  fi
else
  install -d -m 0750 "$r$data"
  echo "installed under $root (no user created, systemctl not run)"
fi
