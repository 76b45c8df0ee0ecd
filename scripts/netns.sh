#!/usr/bin/env bash
# A private network namespace joined to this host by a veth pair, for network fault tests
# (test/faults/network.test.ts): run a server (MinIO) inside it, then cap, cut or reset the
# traffic between the host and it. Needs root, iproute2 (ip, tc) and, for drop/reset, nftables
# (installed with apt-get when missing). Nothing outside the namespace's own /30 is touched:
# the host firewall is left alone (the rules live inside the namespace) and nothing is routed.
#
#   scripts/netns.sh up NAME           create namespace NAME and the veth pair tv-NAME (host) /
#                                      tn-NAME (namespace) on a free 10.99.X.0/30: host 10.99.X.1,
#                                      namespace 10.99.X.2; lo is brought up inside.
#                                      Prints: HOST_IP NS_IP HOST_IF NS_IF
#   scripts/netns.sh info NAME         print the same line for an existing NAME
#   scripts/netns.sh shape NAME RATE [BURST [LATENCY]]
#                                      token bucket (tc tbf) on both ends of the pair, so uploads
#                                      and downloads are capped to RATE (tc units: 20mbit);
#                                      BURST defaults to the larger of 32kbit and RATE/100 (tbf
#                                      needs at least RATE/HZ), LATENCY to 400ms
#   scripts/netns.sh drop NAME [PORT]  blackhole: drop every TCP segment between the host and the
#                                      namespace (to and from PORT only, if given)
#   scripts/netns.sh reset NAME [PORT [AFTER_BYTES]]
#                                      answer every TCP segment from the host (to PORT only, if
#                                      given) with a TCP reset: established connections are reset,
#                                      new ones refused. With AFTER_BYTES (PORT needed), only
#                                      connections that have carried more than AFTER_BYTES (both
#                                      directions, counted from when the rule is set: conntrack
#                                      accounting) are reset: large transfers are cut, small
#                                      requests on fresh connections pass
#   scripts/netns.sh clear NAME [rules|shape]
#                                      remove the shaping and the drop/reset rules (only the
#                                      rules, or only the shaping, if asked)
#   scripts/netns.sh down NAME         clear, kill what still runs inside NAME, delete NAME and
#                                      the pair (no error if NAME does not exist)
#   scripts/netns.sh check             exit 0 if namespaces can be created here (root, ip netns)
#
# NAME: 1-11 characters, lower-case letters, digits and dashes (interface names are <= 15).
set -Eeuo pipefail

NFT_TABLE='tender_fault'

die() {
  echo "netns.sh: $*" >&2
  exit 1
}

check_name() {
  [[ "${1:-}" =~ ^[a-z0-9][a-z0-9-]{0,10}$ ]] || die "NAME must be 1-11 characters of a-z, 0-9 and '-', got '${1:-}'"
}

need_root() {
  [[ "$(id -u)" == 0 ]] || die "must run as root"
  command -v ip >/dev/null || die "ip (iproute2) is not installed"
}

host_if() { echo "tv-$1"; }
ns_if() { echo "tn-$1"; }

exists() {
  [[ -e "/run/netns/$1" ]] || ip netns list 2>/dev/null | awk '{print $1}' | grep -qx -- "$1"
}

nsexec() {
  local name="$1"
  shift
  ip netns exec "$name" "$@"
}

# nft for the drop/reset rules; Debian/Ubuntu: installed from the distribution when missing.
ensure_nft() {
  command -v nft >/dev/null && return 0
  if command -v apt-get >/dev/null; then
    echo "netns.sh: installing nftables (apt-get)" >&2
    export DEBIAN_FRONTEND=noninteractive
    if ! apt-get install -y --no-install-recommends nftables >&2; then
      apt-get update >&2 || true
      apt-get install -y --no-install-recommends nftables >&2 || die "could not install nftables"
    fi
  fi
  command -v nft >/dev/null || die "nft is not installed (install the nftables package)"
}

info_line() {
  local name="$1" hif nif hip nip
  hif="$(host_if "$name")"
  nif="$(ns_if "$name")"
  exists "$name" || die "no namespace $name (run: netns.sh up $name)"
  hip="$(ip -4 -o addr show dev "$hif" 2>/dev/null | awk '{print $4}' | cut -d/ -f1)"
  nip="$(nsexec "$name" ip -4 -o addr show dev "$nif" 2>/dev/null | awk '{print $4}' | cut -d/ -f1)"
  [[ -n "$hip" && -n "$nip" ]] || die "namespace $name has no veth pair $hif/$nif with addresses"
  echo "$hip $nip $hif $nif"
}

# A 10.99.X.0/30 that no address and no route of this host (other than the default) uses yet.
free_subnet() {
  local x
  for x in $(seq 1 254); do
    if ip -4 -o addr show | grep -q " 10\.99\.$x\."; then continue; fi
    if ip -4 route show to match "10.99.$x.2" | grep -qv '^default'; then continue; fi
    echo "$x"
    return 0
  done
  die "no free 10.99.X.0/30 subnet left"
}

up() {
  local name="${1:-}"
  check_name "$name"
  need_root
  exists "$name" && die "namespace $name already exists (run: netns.sh down $name)"
  local hif nif x
  hif="$(host_if "$name")"
  nif="$(ns_if "$name")"
  ip link show "$hif" >/dev/null 2>&1 && die "interface $hif already exists"
  # Two concurrent `up`s must not pick the same subnet: choose and claim it under a lock.
  mkdir -p /run/lock
  exec {lock}>/run/lock/tender-netns.lock
  flock -w 30 "$lock" || die "could not take /run/lock/tender-netns.lock"
  x="$(free_subnet)"
  ip netns add "$name"
  # Anything failing from here on leaves nothing behind.
  trap 'ip link del "$hif" 2>/dev/null || true; ip netns del "$name" 2>/dev/null || true' ERR
  ip link add "$hif" type veth peer name "$nif"
  ip link set "$nif" netns "$name"
  ip addr add "10.99.$x.1/30" dev "$hif"
  flock -u "$lock"
  ip link set "$hif" up
  nsexec "$name" ip link set lo up
  nsexec "$name" ip addr add "10.99.$x.2/30" dev "$nif"
  nsexec "$name" ip link set "$nif" up
  # Link-up is asynchronous: wait (up to 5 s) until the host end reports it.
  local i
  for i in $(seq 1 50); do
    [[ "$(cat "/sys/class/net/$hif/operstate" 2>/dev/null)" == up ]] && break
    sleep 0.1
  done
  trap - ERR
  echo "10.99.$x.1 10.99.$x.2 $hif $nif"
}

default_burst() {
  # RATE in tc units -> bytes/100 (at least 32kbit = 4000 bytes), as a byte count tc accepts.
  local rate="$1" num unit bits
  [[ "$rate" =~ ^([0-9]+)([a-zA-Z]*)$ ]] || die "RATE must look like 20mbit, got '$rate'"
  num="${BASH_REMATCH[1]}"
  unit="$(echo "${BASH_REMATCH[2]}" | tr 'A-Z' 'a-z')"
  case "$unit" in
    bit | '') bits=$num ;;
    kbit) bits=$((num * 1000)) ;;
    mbit) bits=$((num * 1000000)) ;;
    gbit) bits=$((num * 1000000000)) ;;
    bps) bits=$((num * 8)) ;;
    kbps) bits=$((num * 8000)) ;;
    mbps) bits=$((num * 8000000)) ;;
    *) die "unknown rate unit in '$rate' (use bit, kbit, mbit, gbit, bps, kbps, mbps)" ;;
  esac
  local bytes=$((bits / 8 / 100))
  ((bytes < 4000)) && bytes=4000
  echo "${bytes}b"
}

shape() {
  local name="${1:-}" rate="${2:-}" burst="${3:-}" latency="${4:-400ms}"
  check_name "$name"
  need_root
  [[ -n "$rate" ]] || die "usage: netns.sh shape NAME RATE [BURST [LATENCY]]"
  [[ -n "$burst" ]] || burst="$(default_burst "$rate")"
  local line hif nif
  line="$(info_line "$name")"
  read -r _ _ hif nif <<<"$line"
  tc qdisc replace dev "$hif" root tbf rate "$rate" burst "$burst" latency "$latency"
  nsexec "$name" tc qdisc replace dev "$nif" root tbf rate "$rate" burst "$burst" latency "$latency"
}

unshape() {
  local name="$1" hif nif
  hif="$(host_if "$name")"
  nif="$(ns_if "$name")"
  # Deleting the root qdisc restores the default; an error just means there was none.
  tc qdisc del dev "$hif" root 2>/dev/null || true
  if exists "$name"; then nsexec "$name" tc qdisc del dev "$nif" root 2>/dev/null || true; fi
}

# Replace the namespace's fault table with one whose input and output chains hold RULES_IN / RULES_OUT.
load_rules() {
  local name="$1" rules_in="$2" rules_out="$3"
  ensure_nft
  nsexec "$name" nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  nsexec "$name" nft -f - <<EOF
table inet $NFT_TABLE {
  chain input {
    type filter hook input priority 0; policy accept;
    $rules_in
  }
  chain output {
    type filter hook output priority 0; policy accept;
    $rules_out
  }
}
EOF
}

drop() {
  local name="${1:-}" port="${2:-}"
  check_name "$name"
  need_root
  local line nif
  line="$(info_line "$name")"
  read -r _ _ _ nif <<<"$line"
  local in="iifname \"$nif\" meta l4proto tcp drop" out="oifname \"$nif\" meta l4proto tcp drop"
  if [[ -n "$port" ]]; then
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    in="iifname \"$nif\" tcp dport $port drop"
    out="oifname \"$nif\" tcp sport $port drop"
  fi
  load_rules "$name" "$in" "$out"
}

reset() {
  local name="${1:-}" port="${2:-}" after="${3:-}"
  check_name "$name"
  need_root
  local line nif
  line="$(info_line "$name")"
  read -r _ _ _ nif <<<"$line"
  local match="meta l4proto tcp"
  if [[ -n "$port" ]]; then
    [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
    match="tcp dport $port"
  fi
  if [[ -n "$after" ]]; then
    [[ -n "$port" && "$after" =~ ^[0-9]+$ ]] || die "usage: netns.sh reset NAME PORT AFTER_BYTES (a number)"
    # Per-connection byte counters (this namespace only).
    nsexec "$name" sh -c "echo 1 > /proc/sys/net/netfilter/nf_conntrack_acct"
    # Both directions: a keep-alive connection picked up mid-stream may be oriented either way.
    match="$match ct bytes > $after"
  fi
  load_rules "$name" "iifname \"$nif\" $match reject with tcp reset" ""
}

clear_faults() {
  local name="${1:-}" what="${2:-all}"
  check_name "$name"
  need_root
  [[ "$what" =~ ^(all|rules|shape)$ ]] || die "usage: netns.sh clear NAME [rules|shape]"
  [[ "$what" == rules ]] || unshape "$name"
  if [[ "$what" != shape ]] && exists "$name" && command -v nft >/dev/null; then
    nsexec "$name" nft delete table inet "$NFT_TABLE" 2>/dev/null || true
  fi
}

down() {
  local name="${1:-}"
  check_name "$name"
  need_root
  local hif
  hif="$(host_if "$name")"
  if exists "$name"; then
    clear_faults "$name"
    # Processes started inside the namespace keep it (and the pair) alive after `ip netns del`.
    local pids
    pids="$(ip netns pids "$name" 2>/dev/null || true)"
    if [[ -n "$pids" ]]; then
      # shellcheck disable=SC2086
      kill -TERM $pids 2>/dev/null || true
      for _ in $(seq 1 50); do
        [[ -z "$(ip netns pids "$name" 2>/dev/null || true)" ]] && break
        sleep 0.1
      done
      pids="$(ip netns pids "$name" 2>/dev/null || true)"
      # shellcheck disable=SC2086
      [[ -n "$pids" ]] && kill -KILL $pids 2>/dev/null || true
    fi
    ip netns del "$name" 2>/dev/null || true
  fi
  tc qdisc del dev "$hif" root 2>/dev/null || true
  ip link del "$hif" 2>/dev/null || true
}

check() {
  need_root
  local probe="tndchk$$"
  probe="${probe:0:11}"
  ip netns add "$probe" 2>/dev/null || die "ip netns add failed (no network namespace support?)"
  local ok=0
  if ip link add "tv-$probe" type veth peer name "tn-$probe" 2>/dev/null; then
    ip link del "tv-$probe" 2>/dev/null || true
  else
    ok=1
  fi
  ip netns del "$probe" 2>/dev/null || true
  ((ok == 0)) || die "cannot create a veth pair (no veth support in this kernel?)"
}

cmd="${1:-}"
shift || true
case "$cmd" in
  up) up "$@" ;;
  info) check_name "${1:-}"; need_root; info_line "$1" ;;
  shape) shape "$@" ;;
  drop) drop "$@" ;;
  reset) reset "$@" ;;
  clear) clear_faults "$@" ;;
  down) down "$@" ;;
  check) check ;;
  *) die "usage: netns.sh up|info|shape|drop|reset|clear|down NAME ... | check" ;;
esac
