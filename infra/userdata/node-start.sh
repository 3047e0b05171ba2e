#!/bin/bash
# oklog node start-up on EC2 (Amazon Linux 2023). The CDK construct (infra/oklog-cluster.ts)
# renders a prefix that exports the OKLOG_* settings below, writes the systemd unit to
# $OKLOG_UNIT_SOURCE, and appends this file as the instance user data.
#
# Steps: provision (Node.js, aws-cfn-bootstrap, the oklog release from S3, the service user, the
# encrypted data volume) → private IPv4 through an IMDSv2 token → peers by EC2 tag → systemd unit
# and environment file → start → wait for /health → cfn-signal.
#
# Every path and endpoint can be overridden so the node-start part runs unprivileged in a test:
#   OKLOG_ROOT=/tmp/x          install root (default /)
#   OKLOG_IMDS_URL=http://...  metadata endpoint (default http://169.254.169.254)
#   OKLOG_SKIP_PROVISION=1     skip packages, release, user and data volume
#   OKLOG_NO_SYSTEMD=1         run the unit's ExecStart in the background instead of systemctl,
#                              pid in $OKLOG_PID_FILE, output in $OKLOG_LOG_FILE
set -euo pipefail
shopt -s inherit_errexit

: "${OKLOG_ROOT:=/}"
: "${OKLOG_IMDS_URL:=http://169.254.169.254}"
: "${OKLOG_MODE:=ingeststore}"
: "${OKLOG_DATA_DIR:=/var/lib/oklog}"
: "${OKLOG_DATA_DEVICE:=}"
: "${OKLOG_BIND:=0.0.0.0}"
: "${OKLOG_API_PORT:=7650}"
: "${OKLOG_FAST_PORT:=7651}"
: "${OKLOG_DURABLE_PORT:=7652}"
: "${OKLOG_BULK_PORT:=7653}"
: "${OKLOG_CLUSTER_PORT:=7659}"
: "${OKLOG_REPLICATION_FACTOR:=2}"
: "${OKLOG_RETAIN:=168h}"
: "${OKLOG_EXTRA_FLAGS:=}"
: "${OKLOG_PEERS:=}"
: "${OKLOG_DISCOVERY_TAG_KEY:=}"
: "${OKLOG_DISCOVERY_TAG_VALUE:=}"
: "${OKLOG_REGION:=}"
: "${OKLOG_RELEASE_S3_URL:=}"
: "${OKLOG_TIERING_BUCKET:=}"
: "${OKLOG_CLOUDWATCH_AGENT:=0}"
: "${OKLOG_UNIT_SOURCE:=}"
: "${OKLOG_USER:=oklog}"
: "${OKLOG_HEALTH_TIMEOUT:=300}"
: "${OKLOG_CFN_STACK:=}"
: "${OKLOG_CFN_RESOURCE:=}"
: "${OKLOG_CFN_SIGNAL:=/opt/aws/bin/cfn-signal}"
: "${OKLOG_SKIP_PROVISION:=0}"
: "${OKLOG_NO_SYSTEMD:=0}"

root="${OKLOG_ROOT%/}"
etc_dir="$root/etc/oklog"
env_file="$etc_dir/oklog.env"
unit_file="$root/etc/systemd/system/oklog.service"
: "${OKLOG_PID_FILE:=$root/run/oklog.pid}"
: "${OKLOG_LOG_FILE:=$root/var/log/oklog.log}"

log() { echo "oklog-node-start: $*" >&2; }

# Tells CloudFormation whether this instance came up (no-op outside a CloudFormation stack, or
# when the stack is not waiting, e.g. a later scale-out).
signal_cfn() {
  local code="$1"
  [ -n "$OKLOG_CFN_STACK" ] && [ -n "$OKLOG_CFN_RESOURCE" ] || return 0
  "$OKLOG_CFN_SIGNAL" -e "$code" --stack "$OKLOG_CFN_STACK" --resource "$OKLOG_CFN_RESOURCE" \
    ${OKLOG_REGION:+--region "$OKLOG_REGION"} || log "cfn-signal failed (stack not waiting?)"
}

on_exit() {
  local code=$?
  if [ "$code" -ne 0 ]; then
    log "start-up failed (exit $code)"
    signal_cfn 1
  fi
}
trap on_exit EXIT

retry() {
  local n=0
  until "$@"; do
    n=$((n + 1))
    [ "$n" -lt 10 ] || return 1
    sleep $((n < 5 ? n : 5))
  done
}

# ---- provisioning (skipped in local tests) ---------------------------------------------------

install_packages() {
  log "installing Node.js 20 and aws-cfn-bootstrap"
  retry dnf install -y -q nodejs20 nodejs20-npm aws-cfn-bootstrap
  # AL2023 namespaces Node.js (node-20, npm-20); make `node` resolve for the oklog shebang.
  if ! command -v node >/dev/null 2>&1; then
    alternatives --set node /usr/bin/node-20 2>/dev/null || ln -sf /usr/bin/node-20 /usr/local/bin/node
  fi
  if [ "$OKLOG_CLOUDWATCH_AGENT" = 1 ]; then
    retry dnf install -y -q amazon-cloudwatch-agent
  fi
}

install_release() {
  [ -n "$OKLOG_RELEASE_S3_URL" ] || return 0
  log "installing the oklog release from $OKLOG_RELEASE_S3_URL"
  local tgz=/root/oklog-release.tgz npm_bin
  export HOME="${HOME:-/root}" # cloud-init may run us without HOME; npm needs a cache dir
  retry aws s3 cp --only-show-errors ${OKLOG_REGION:+--region "$OKLOG_REGION"} "$OKLOG_RELEASE_S3_URL" "$tgz"
  npm_bin=$(command -v npm-20 || command -v npm)
  retry "$npm_bin" install --global --prefix /opt/oklog --omit=dev --no-audit --no-fund "$tgz"
  ln -sf /opt/oklog/bin/oklog /usr/local/bin/oklog
  ln -sf /opt/oklog/bin/oklogctl /usr/local/bin/oklogctl
}

create_user() {
  id -u "$OKLOG_USER" >/dev/null 2>&1 ||
    useradd --system --home-dir "$OKLOG_DATA_DIR" --no-create-home --shell /sbin/nologin "$OKLOG_USER"
}

# The encrypted EBS data volume (attached as /dev/sdf; AL2023's udev rules link the NVMe device).
mount_data_volume() {
  mkdir -p "$OKLOG_DATA_DIR"
  if [ -n "$OKLOG_DATA_DEVICE" ]; then
    local dev="" i uuid
    for i in $(seq 1 60); do
      for dev in "$OKLOG_DATA_DEVICE" "${OKLOG_DATA_DEVICE/sd/xvd}"; do
        [ -b "$dev" ] && break 2
      done
      dev=""
      log "waiting for $OKLOG_DATA_DEVICE ($i)"
      sleep 2
    done
    [ -n "$dev" ] || { log "data device $OKLOG_DATA_DEVICE not found"; return 1; }
    blkid "$dev" >/dev/null 2>&1 || mkfs.xfs -q "$dev"
    uuid=$(blkid -s UUID -o value "$dev")
    grep -q "$uuid" /etc/fstab || echo "UUID=$uuid $OKLOG_DATA_DIR xfs defaults,noatime,nofail 0 2" >>/etc/fstab
    mountpoint -q "$OKLOG_DATA_DIR" || mount "$OKLOG_DATA_DIR"
  fi
  chown "$OKLOG_USER:$OKLOG_USER" "$OKLOG_DATA_DIR"
  chmod 0750 "$OKLOG_DATA_DIR"
}

start_cloudwatch_agent() {
  [ "$OKLOG_CLOUDWATCH_AGENT" = 1 ] || return 0
  local cfg=/opt/aws/amazon-cloudwatch-agent/etc/oklog.json
  cat >"$cfg" <<EOF
{"metrics":{"namespace":"OkLog","append_dimensions":{"InstanceId":"\${aws:InstanceId}"},
 "metrics_collected":{"mem":{"measurement":["mem_used_percent"]},
  "disk":{"measurement":["used_percent"],"resources":["$OKLOG_DATA_DIR"]}}}}
EOF
  /opt/aws/amazon-cloudwatch-agent/bin/amazon-cloudwatch-agent-ctl -a fetch-config -m ec2 -s -c "file:$cfg"
}

# ---- node start -------------------------------------------------------------------------------

# Private IPv4 through an IMDSv2 session token (IMDSv1 is disabled on the instances).
fetch_private_ip() {
  local token
  token=$(curl -fsS --retry 5 --retry-connrefused -X PUT "$OKLOG_IMDS_URL/latest/api/token" \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300")
  curl -fsS --retry 5 --retry-connrefused -H "X-aws-ec2-metadata-token: $token" \
    "$OKLOG_IMDS_URL/latest/meta-data/local-ipv4"
}

# Other cluster members: every pending or running instance carrying the cluster tag (both fleets
# carry it). A new instance joins through any of them; gossip spreads it to the rest.
discover_peers() {
  local self="$1" out ip
  [ -n "$OKLOG_DISCOVERY_TAG_KEY" ] || return 0
  out=$(retry aws ec2 describe-instances ${OKLOG_REGION:+--region "$OKLOG_REGION"} \
    --filters "Name=tag:$OKLOG_DISCOVERY_TAG_KEY,Values=$OKLOG_DISCOVERY_TAG_VALUE" \
    "Name=instance-state-name,Values=pending,running" \
    --query 'Reservations[].Instances[].PrivateIpAddress' --output text)
  for ip in $out; do
    [[ "$ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || continue
    [ "$ip" != "$self" ] && echo "$ip"
  done
  return 0
}

build_flags() {
  local ip="$1" peer
  shift
  local f="-api tcp://$OKLOG_BIND:$OKLOG_API_PORT -cluster tcp://$OKLOG_BIND:$OKLOG_CLUSTER_PORT"
  f+=" -cluster.advertise-addr $ip"
  for peer in "$@"; do
    [[ "$peer" == *:* ]] || peer="$peer:$OKLOG_CLUSTER_PORT"
    f+=" -peer $peer"
  done
  case "$OKLOG_MODE" in
  ingest | ingeststore)
    f+=" -ingest.fast tcp://$OKLOG_BIND:$OKLOG_FAST_PORT -ingest.durable tcp://$OKLOG_BIND:$OKLOG_DURABLE_PORT"
    f+=" -ingest.bulk tcp://$OKLOG_BIND:$OKLOG_BULK_PORT -ingest.path $OKLOG_DATA_DIR/ingest"
    ;;
  esac
  case "$OKLOG_MODE" in
  store | ingeststore)
    f+=" -store.path $OKLOG_DATA_DIR/store -store.segment-replication-factor $OKLOG_REPLICATION_FACTOR"
    f+=" -store.segment-retain $OKLOG_RETAIN"
    ;;
  esac
  [ -z "$OKLOG_EXTRA_FLAGS" ] || f+=" $OKLOG_EXTRA_FLAGS"
  echo "$f"
}

write_config() {
  local flags="$1"
  mkdir -p "$etc_dir" "$(dirname "$unit_file")"
  {
    echo "# Written by oklog-node-start at $(date -u +%Y-%m-%dT%H:%M:%SZ)."
    echo "OKLOG_MODE=$OKLOG_MODE"
    echo "OKLOG_FLAGS=\"$flags\""
    [ -z "$OKLOG_TIERING_BUCKET" ] || echo "OKLOG_TIERING_BUCKET=$OKLOG_TIERING_BUCKET"
  } >"$env_file.tmp"
  chmod 0644 "$env_file.tmp"
  mv "$env_file.tmp" "$env_file"
  if [ "$OKLOG_DATA_DIR" != /var/lib/oklog ]; then
    mkdir -p "$unit_file.d"
    printf '[Service]\nReadWritePaths=%s\nWorkingDirectory=%s\n' "$OKLOG_DATA_DIR" "$OKLOG_DATA_DIR" \
      >"$unit_file.d/data-dir.conf"
  fi
  [ -n "$OKLOG_UNIT_SOURCE" ] || { log "OKLOG_UNIT_SOURCE is not set"; return 1; }
  cp "$OKLOG_UNIT_SOURCE" "$unit_file"
}

# Without systemd: the unit's ExecStart line, with $VAR (split on spaces) and ${VAR} (one word)
# expanded from the environment file as systemd does, run in the background.
start_without_systemd() {
  local line word var
  local -a argv=() words=() val=()
  line=$(sed -n 's/^ExecStart=//p' "$unit_file")
  set -o allexport
  # shellcheck source=/dev/null
  . "$env_file"
  set +o allexport
  read -r -a words <<<"$line"
  for word in "${words[@]}"; do
    if [[ "$word" =~ ^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$ ]]; then
      var="${BASH_REMATCH[1]}"
      argv+=("${!var:-}")
    elif [[ "$word" =~ ^\$([A-Za-z_][A-Za-z0-9_]*)$ ]]; then
      var="${BASH_REMATCH[1]}"
      read -r -a val <<<"${!var:-}"
      argv+=("${val[@]}")
    else
      argv+=("$word")
    fi
  done
  mkdir -p "$(dirname "$OKLOG_PID_FILE")" "$(dirname "$OKLOG_LOG_FILE")" "$OKLOG_DATA_DIR"
  log "starting: ${argv[*]}"
  (cd "$OKLOG_DATA_DIR" && exec "${argv[@]}") </dev/null >>"$OKLOG_LOG_FILE" 2>&1 &
  echo $! >"$OKLOG_PID_FILE"
}

start_node() {
  if [ "$OKLOG_NO_SYSTEMD" = 1 ]; then
    start_without_systemd
  else
    systemctl daemon-reload
    systemctl enable oklog.service
    systemctl restart oklog.service
  fi
}

wait_healthy() {
  local deadline=$((SECONDS + OKLOG_HEALTH_TIMEOUT)) host=127.0.0.1
  [ "$OKLOG_BIND" = 0.0.0.0 ] || host="$OKLOG_BIND"
  until curl -fsS -o /dev/null --max-time 2 "http://$host:$OKLOG_API_PORT/health"; do
    if [ "$OKLOG_NO_SYSTEMD" = 1 ] && ! kill -0 "$(cat "$OKLOG_PID_FILE")" 2>/dev/null; then
      log "node exited; see $OKLOG_LOG_FILE"
      return 1
    fi
    [ "$SECONDS" -lt "$deadline" ] || { log "no /health after ${OKLOG_HEALTH_TIMEOUT}s"; return 1; }
    sleep 1
  done
  log "node is healthy"
}

main() {
  if [ "$OKLOG_SKIP_PROVISION" != 1 ]; then
    install_packages
    install_release
    create_user
    mount_data_volume
    start_cloudwatch_agent
  fi
  local ip flags discovered
  local -a peers=()
  ip=$(fetch_private_ip)
  [[ "$ip" =~ ^[0-9]+\.[0-9]+\.[0-9]+\.[0-9]+$ ]] || { log "bad local-ipv4 '$ip'"; return 1; }
  log "private IPv4 $ip"
  discovered=$(discover_peers "$ip")
  read -r -a peers <<<"${discovered//$'\n'/ } $OKLOG_PEERS"
  log "peers: ${peers[*]:-none}"
  flags=$(build_flags "$ip" "${peers[@]}")
  write_config "$flags"
  start_node
  wait_healthy
  signal_cfn 0
}

main "$@"
