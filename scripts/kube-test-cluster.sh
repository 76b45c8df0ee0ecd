#!/usr/bin/env bash
# A real Kubernetes API server for tests: kube-apiserver + etcd on loopback, nothing else (no
# kubelet, scheduler or controller-manager). Both are built from source through the Go module proxy.
#
#   scripts/kube-test-cluster.sh build            build kube-apiserver and etcd into $TENDER_TOOLS_DIR
#                                                 (default ~/.cache/tender/bin); a no-op when the
#                                                 pinned versions are there (*.version stamps)
#   scripts/kube-test-cluster.sh start DIR [PORT] start etcd (data in DIR/etcd, free loopback ports)
#                                                 and kube-apiserver on https://127.0.0.1:PORT (a free
#                                                 port if PORT is left out); wait for /readyz; write
#                                                 DIR/kubeconfig and print its path. Pids in DIR/*.pid,
#                                                 logs in DIR/*.log, certificates in DIR/pki
#   scripts/kube-test-cluster.sh stop DIR         stop the two processes named by DIR/*.pid (only
#                                                 those pids) and remove the pid files; DIR stays
#
# Starting again with the same DIR (and PORT) brings the same data and certificates back: tests
# use this to restart the API server under a running client.
#
# Pinned: kube-apiserver from k8s.io/kubernetes v1.34.4 (staging modules k8s.io/* v0.34.4),
#         etcd from go.etcd.io/etcd/server/v3 v3.6.4 (etcdmain.Main).
# k8s.io/kubernetes cannot be `go install`ed (its go.mod points 31 staging modules at ./staging), so
# `build` makes a throwaway module that requires it and replaces every staging module by its
# published v0.34.4; etcd is built from a throwaway main that calls etcdmain.Main.
# Needs: bash, Go >= 1.24 (GO=/path/to/go picks another toolchain), openssl; curl if there (else
# openssl s_client polls /readyz). CGO is off, so no C compiler is needed.
#
# Measured on a 2-core VM (Go 1.26, one core, under nice): first build ~11 min (~2 GiB of Go build
# cache, peak RSS 1.8 GB), a rebuild from the Go build cache 14 s; start to /readyz ~4 s; stop ~1 s.
# RSS: kube-apiserver ~260 MB, etcd ~43 MB.
#
# The kubeconfig's user is an admin (client certificate, group system:masters), with the CA
# embedded. Authorization is RBAC, so tests can also check Forbidden for other users.
# KUBE_TEST_APISERVER_ARGS adds flags to kube-apiserver (e.g. --feature-gates=...);
# KUBE_TEST_READY_TIMEOUT (seconds, default 90) bounds the wait for /readyz.
#
# Caveats (no controllers run):
# - Deleted namespaces stay Terminating forever: use a fresh, unique namespace per test.
# - No garbage collection (ownerReferences are not followed), no ReplicaSets from Deployments, no
#   Endpoints, no "default" ServiceAccount or kube-root-ca.crt ConfigMap in new namespaces; the
#   ServiceAccount admission plugin is off so pods can still be created.
# - Pods stay Pending. A pod without spec.nodeName is deleted at once; one with a nodeName waits
#   for a kubelet that never comes unless deleted with gracePeriodSeconds: 0.
# - A just-created CRD: its URLs are 404 until it is Established; then for about a second a watch
#   with allowWatchBookmarks gets 429 "storage is (re)initializing" (Retry-After: 1).
# - etcd runs with --unsafe-no-fsync: the data in DIR/etcd is for one test run, not for keeps.
set -euo pipefail

K8S_MODULE='k8s.io/kubernetes'
K8S_VERSION='v1.34.4'
K8S_STAGING_VERSION='v0.34.4'
ETCD_MODULE='go.etcd.io/etcd/server/v3'
ETCD_VERSION='v3.6.4'
TOOLS_DIR="${TENDER_TOOLS_DIR:-$HOME/.cache/tender/bin}"
GO="${GO:-go}"
READY_TIMEOUT_S="${KUBE_TEST_READY_TIMEOUT:-90}"

die() {
  echo "kube-test-cluster.sh: $*" >&2
  exit 1
}

# Which version each binary in TOOLS_DIR came from, so a pin change rebuilds it.
is_built() { # name module@version
  [[ -x "$TOOLS_DIR/$1" && -f "$TOOLS_DIR/$1.version" && "$(cat "$TOOLS_DIR/$1.version")" == "$2" ]]
}

build() {
  if is_built kube-apiserver "$K8S_MODULE@$K8S_VERSION" && is_built etcd "$ETCD_MODULE@$ETCD_VERSION"; then
    return 0
  fi
  command -v "$GO" >/dev/null || die "Go >= 1.24 is needed to build kube-apiserver and etcd (set GO=/path/to/go)"
  mkdir -p "$TOOLS_DIR"
  # Absolute, since the build runs in other directories.
  TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"
  local work
  work="$(mktemp -d "${TMPDIR:-/tmp}/kube-test-build.XXXXXX")"
  # shellcheck disable=SC2064
  trap "rm -rf '$work'; rm -f '$TOOLS_DIR/kube-apiserver.tmp.$$' '$TOOLS_DIR/etcd.tmp.$$'" EXIT
  export CGO_ENABLED=0 GOFLAGS="${GOFLAGS:-} -mod=mod"
  local gobuild=(nice -n 10 "$GO" build -buildvcs=false -trimpath)

  if ! is_built kube-apiserver "$K8S_MODULE@$K8S_VERSION"; then
    echo "kube-test-cluster.sh: building kube-apiserver $K8S_VERSION (about 10 min on one core the first time)" >&2
    mkdir "$work/kube"
    if ! (
      cd "$work/kube"
      # (errexit does not apply inside a subshell that is tested, hence the &&)
      "$GO" mod init kbuild &&
        gomod="$("$GO" mod download -json "$K8S_MODULE@$K8S_VERSION" | sed -n 's/^[[:space:]]*"GoMod": "\(.*\)",$/\1/p')" &&
        [[ -f "$gomod" ]] &&
        # Every `k8s.io/x => ./staging/src/k8s.io/x` line becomes `k8s.io/x => k8s.io/x v0.34.4`.
        staging="$(sed -n 's#^[[:space:]]*\(k8s\.io/[^[:space:]]*\) => \./staging/.*#\1#p' "$gomod")" &&
        [[ -n "$staging" ]] &&
        edits=(-require="$K8S_MODULE@$K8S_VERSION") &&
        for m in $staging; do edits+=(-replace="$m=$m@$K8S_STAGING_VERSION"); done &&
        "$GO" mod edit "${edits[@]}" &&
        # Same runtime defaults as upstream (their go.mod says `godebug default=go1.24`).
        { sed -n '/^godebug /p' "$gomod" >>go.mod; } &&
        "${gobuild[@]}" -o "$TOOLS_DIR/kube-apiserver.tmp.$$" -ldflags "-s -w \
          -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
          -X k8s.io/component-base/version.gitMajor=$(echo "$K8S_VERSION" | cut -d. -f1 | tr -d v) \
          -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) \
          -X k8s.io/component-base/version.gitTreeState=clean \
          -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION" \
          "$K8S_MODULE/cmd/kube-apiserver"
    ) >"$work/kube.log" 2>&1; then
      tail -n 30 "$work/kube.log" >&2
      die "building kube-apiserver $K8S_VERSION failed"
    fi
    mv -f "$TOOLS_DIR/kube-apiserver.tmp.$$" "$TOOLS_DIR/kube-apiserver"
    echo "$K8S_MODULE@$K8S_VERSION" >"$TOOLS_DIR/kube-apiserver.version"
  fi

  if ! is_built etcd "$ETCD_MODULE@$ETCD_VERSION"; then
    echo "kube-test-cluster.sh: building etcd $ETCD_VERSION (a few minutes the first time)" >&2
    mkdir "$work/etcd"
    if ! (
      cd "$work/etcd"
      printf '%s\n' 'package main' '' 'import (' '	"os"' '' '	"go.etcd.io/etcd/server/v3/etcdmain"' ')' '' \
        'func main() { etcdmain.Main(os.Args) }' >main.go
      "$GO" mod init ebuild &&
        "$GO" mod edit -require="$ETCD_MODULE@$ETCD_VERSION" &&
        "${gobuild[@]}" -o "$TOOLS_DIR/etcd.tmp.$$" -ldflags "-s -w" .
    ) >"$work/etcd.log" 2>&1; then
      tail -n 30 "$work/etcd.log" >&2
      die "building etcd $ETCD_VERSION failed"
    fi
    mv -f "$TOOLS_DIR/etcd.tmp.$$" "$TOOLS_DIR/etcd"
    echo "$ETCD_MODULE@$ETCD_VERSION" >"$TOOLS_DIR/etcd.version"
  fi
  rm -rf "$work"
  trap - EXIT
}

# True when something accepts TCP connections on 127.0.0.1:PORT.
port_in_use() {
  (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null
}

# A port nobody listens on, below the usual ephemeral range and not among the ones given.
free_port() {
  local p _
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % 12000))
    [[ " $* " == *" $p "* ]] && continue
    port_in_use "$p" || {
      echo "$p"
      return 0
    }
  done
  die "found no free port on 127.0.0.1"
}

# True while PID exists and is not a zombie waiting to be reaped.
alive() {
  kill -0 "$1" 2>/dev/null || return 1
  [[ ! -r "/proc/$1/stat" ]] || [[ "$(cut -d' ' -f3 <"/proc/$1/stat" 2>/dev/null)" != Z ]]
}

# True while PID runs the program NAME (guards against a stale pid file naming a reused pid).
runs() { # pid name
  [[ "$1" =~ ^[0-9]+$ ]] && alive "$1" || return 1
  [[ -r "/proc/$1/cmdline" ]] || return 0
  local argv0
  argv0="$(tr '\0' '\n' <"/proc/$1/cmdline" | head -n 1)"
  [[ "${argv0##*/}" == "$2" ]]
}

# HTTP status of GET https://127.0.0.1:PORT/PATH as the admin user, or 000.
https_status() { # dir port path
  local pki="$1/pki"
  if command -v curl >/dev/null; then
    curl -sS -o /dev/null -w '%{http_code}' --max-time 2 --cacert "$pki/ca.crt" \
      --cert "$pki/admin.crt" --key "$pki/admin.key" "https://127.0.0.1:$2$3" 2>/dev/null || echo 000
  else
    printf 'GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n' "$3" |
      timeout 2 openssl s_client -quiet -connect "127.0.0.1:$2" -servername localhost -verify_return_error \
        -CAfile "$pki/ca.crt" -cert "$pki/admin.crt" -key "$pki/admin.key" 2>/dev/null |
      awk 'NR==1{print $2; found=1} END{if(!found) print "000"}'
  fi
}

# CA, serving cert, admin client cert (system:masters), service-account key pair.
make_pki() { # dir
  local pki="$1/pki"
  [[ -f "$pki/admin.crt" && -f "$pki/sa.pub" ]] && return 0
  mkdir -p "$pki"
  (
    cd "$pki"
    umask 077
    ec() { openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$1" 2>/dev/null; }
    # Our own config, so the system openssl.cnf does not matter.
    cat >openssl.cnf <<'EOF'
[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = IP:127.0.0.1, IP:10.0.0.1, DNS:localhost, DNS:kubernetes, DNS:kubernetes.default, DNS:kubernetes.default.svc, DNS:kubernetes.default.svc.cluster.local
[client]
basicConstraints = CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
EOF
    ec ca.key
    openssl req -config openssl.cnf -x509 -new -key ca.key -subj "/CN=kube-test-ca" -days 3650 \
      -extensions ca -out ca.crt
    sign() { # name subject extensions
      ec "$1.key"
      openssl req -config openssl.cnf -new -key "$1.key" -subj "$2" -out "$1.csr"
      openssl x509 -req -in "$1.csr" -CA ca.crt -CAkey ca.key -CAcreateserial -days 3650 \
        -extfile openssl.cnf -extensions "$3" -out "$1.crt" 2>/dev/null
      rm -f "$1.csr"
    }
    sign apiserver "/CN=kube-apiserver" server
    sign admin "/O=system:masters/CN=kube-test-admin" client
    openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out sa.key 2>/dev/null
    openssl pkey -in sa.key -pubout -out sa.pub
    chmod 644 ca.crt apiserver.crt admin.crt sa.pub
  ) || die "openssl failed to make the certificates in $pki"
}

b64() { base64 <"$1" | tr -d '\n'; }

write_kubeconfig() { # dir port
  local pki="$1/pki"
  cat >"$1/kubeconfig.tmp" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: kube-test
  cluster:
    server: https://127.0.0.1:$2
    certificate-authority-data: $(b64 "$pki/ca.crt")
users:
- name: kube-test-admin
  user:
    client-certificate-data: $(b64 "$pki/admin.crt")
    client-key-data: $(b64 "$pki/admin.key")
contexts:
- name: kube-test
  context:
    cluster: kube-test
    user: kube-test-admin
    namespace: default
current-context: kube-test
EOF
  chmod 600 "$1/kubeconfig.tmp"
  mv -f "$1/kubeconfig.tmp" "$1/kubeconfig"
}

# Start etcd on two free ports; echo the client port.
start_etcd() { # dir
  local dir="$1" _ cport pport pid
  for _ in 1 2 3; do
    cport="$(free_port)"
    pport="$(free_port "$cport")"
    (cd "$dir" && exec nohup "$TOOLS_DIR/etcd" --name=kube-test --data-dir="$dir/etcd" \
      --listen-client-urls="http://127.0.0.1:$cport" --advertise-client-urls="http://127.0.0.1:$cport" \
      --listen-peer-urls="http://127.0.0.1:$pport" --initial-advertise-peer-urls="http://127.0.0.1:$pport" \
      --initial-cluster="kube-test=http://127.0.0.1:$pport" --unsafe-no-fsync) \
      >>"$dir/etcd.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/etcd.pid"
    local deadline=$((SECONDS + 30))
    while ((SECONDS < deadline)); do
      alive "$pid" || break
      if port_in_use "$cport"; then
        echo "$cport"
        return 0
      fi
      sleep 0.05
    done
    kill "$pid" 2>/dev/null || true
    rm -f "$dir/etcd.pid"
    grep -q 'address already in use' "$dir/etcd.log" || break
  done
  tail -n 20 "$dir/etcd.log" >&2 || true
  die "etcd did not start (log: $dir/etcd.log)"
}

start() {
  local dir="${1:-}" port="${2:-}"
  [[ -n "$dir" ]] || die "usage: kube-test-cluster.sh start DIR [PORT]"
  [[ -z "$port" || "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
  build
  TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"
  mkdir -p "$dir"
  dir="$(cd "$dir" && pwd)"
  local f
  for f in etcd kube-apiserver; do
    if [[ -f "$dir/$f.pid" ]] && runs "$(cat "$dir/$f.pid")" "$f"; then
      die "$f started with $dir is already running (pid $(cat "$dir/$f.pid")); stop it first"
    fi
  done
  if [[ -n "$port" ]] && port_in_use "$port"; then
    die "127.0.0.1:$port is already in use"
  fi
  make_pki "$dir"
  local etcd_port
  etcd_port="$(start_etcd "$dir")"
  local pki="$dir/pki" _ pid why
  for _ in 1 2 3; do
    local p="${port:-$(free_port "$etcd_port")}"
    # shellcheck disable=SC2086  # KUBE_TEST_APISERVER_ARGS is a list of flags
    (cd "$dir" && exec nohup "$TOOLS_DIR/kube-apiserver" \
      --etcd-servers="http://127.0.0.1:$etcd_port" \
      --bind-address=127.0.0.1 --secure-port="$p" --cert-dir="$pki" \
      --tls-cert-file="$pki/apiserver.crt" --tls-private-key-file="$pki/apiserver.key" \
      --client-ca-file="$pki/ca.crt" \
      --service-account-issuer=https://kubernetes.default.svc.cluster.local \
      --service-account-key-file="$pki/sa.pub" --service-account-signing-key-file="$pki/sa.key" \
      --service-cluster-ip-range=10.0.0.0/24 \
      --authorization-mode=RBAC \
      --disable-admission-plugins=ServiceAccount \
      --endpoint-reconciler-type=none \
      --allow-privileged=true \
      --profiling=false \
      ${KUBE_TEST_APISERVER_ARGS:-}) \
      >>"$dir/kube-apiserver.log" 2>&1 </dev/null &
    pid=$!
    echo "$pid" >"$dir/kube-apiserver.pid"
    local deadline=$((SECONDS + READY_TIMEOUT_S))
    why="kube-apiserver did not become ready within $READY_TIMEOUT_S s"
    while ((SECONDS < deadline)); do
      alive "$pid" || { why="kube-apiserver exited during start-up"; break; }
      runs "$(cat "$dir/etcd.pid")" etcd || { why="etcd exited during start-up"; break; }
      if [[ "$(https_status "$dir" "$p" /readyz)" == 200 ]]; then
        write_kubeconfig "$dir" "$p"
        echo "$dir/kubeconfig"
        return 0
      fi
      sleep 0.1
    done
    kill "$pid" 2>/dev/null || true
    rm -f "$dir/kube-apiserver.pid"
    # Retry only when a port we picked was taken between the check and the bind.
    if [[ -n "$port" ]] || ! grep -q 'address already in use' "$dir/kube-apiserver.log"; then break; fi
  done
  tail -n 20 "$dir/kube-apiserver.log" >&2 || true
  stop "$dir"
  die "$why (logs: $dir/kube-apiserver.log, $dir/etcd.log)"
}

stop() {
  local dir="${1:-}"
  [[ -n "$dir" ]] || die "usage: kube-test-cluster.sh stop DIR"
  # Both get SIGTERM at once (one after the other takes ~2 s longer); SIGKILL after 10 s.
  local name pid pids=""
  for name in kube-apiserver etcd; do
    [[ -f "$dir/$name.pid" ]] || continue
    pid="$(cat "$dir/$name.pid")"
    if runs "$pid" "$name" && kill "$pid" 2>/dev/null; then pids="$pids $pid"; fi
  done
  local _ left
  for _ in $(seq 1 100); do
    left=""
    for pid in $pids; do alive "$pid" && left="$left $pid"; done
    pids="$left"
    [[ -n "$pids" ]] || break
    sleep 0.1
  done
  for pid in $pids; do kill -9 "$pid" 2>/dev/null || true; done
  rm -f "$dir/kube-apiserver.pid" "$dir/etcd.pid"
}

case "${1:-}" in
  build) build ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: kube-test-cluster.sh build | start DIR [PORT] | stop DIR" ;;
esac
