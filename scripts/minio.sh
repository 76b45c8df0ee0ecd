#!/usr/bin/env bash
# A throwaway MinIO server for tests and benchmarks, on loopback only.
#
#   scripts/minio.sh build            install the pinned MinIO into $TENDER_TOOLS_DIR (default ~/.cache/tender/bin)
#   scripts/minio.sh start DIR PORT   start it on 127.0.0.1:PORT with data in DIR/data; pid in DIR/minio.pid;
#                                     waits for /minio/health/live and prints the endpoint URL
#   scripts/minio.sh stop DIR         stop the server started with DIR
#
# Credentials come from MINIO_ROOT_USER / MINIO_ROOT_PASSWORD (defaults tender / tender-secret-key).
# The console listens on 127.0.0.1:PORT+1 unless MINIO_CONSOLE_PORT says otherwise.
set -euo pipefail

MINIO_MODULE='github.com/minio/minio@v0.0.0-20260212201848-7aac2a2c5b7c'
TOOLS_DIR="${TENDER_TOOLS_DIR:-$HOME/.cache/tender/bin}"
MINIO_BIN="$TOOLS_DIR/minio"
# Marks which module version the binary in TOOLS_DIR came from, so a pin change rebuilds it.
STAMP="$TOOLS_DIR/minio.version"

die() {
  echo "minio.sh: $*" >&2
  exit 1
}

build() {
  if [[ -x "$MINIO_BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$MINIO_MODULE" ]]; then
    return 0
  fi
  mkdir -p "$TOOLS_DIR"
  # TENDER_MINIO_PREBUILT may name a binary of the same pinned version to copy instead of building.
  if [[ -n "${TENDER_MINIO_PREBUILT:-}" && -x "${TENDER_MINIO_PREBUILT}" ]]; then
    cp "$TENDER_MINIO_PREBUILT" "$MINIO_BIN.tmp.$$"
  else
    command -v go >/dev/null || die "Go is needed to build MinIO (install Go >= 1.24, or set TENDER_MINIO_PREBUILT)"
    echo "minio.sh: building $MINIO_MODULE (takes a few minutes the first time)" >&2
    local gobin
    gobin="$(mktemp -d "$TOOLS_DIR/.gobin.XXXXXX")"
    if ! GOBIN="$gobin" GOFLAGS="${GOFLAGS:--buildvcs=false}" go install "$MINIO_MODULE" >&2; then
      rm -rf "$gobin"
      die "go install $MINIO_MODULE failed"
    fi
    mv "$gobin/minio" "$MINIO_BIN.tmp.$$"
    rm -rf "$gobin"
  fi
  chmod +x "$MINIO_BIN.tmp.$$"
  mv -f "$MINIO_BIN.tmp.$$" "$MINIO_BIN"
  echo "$MINIO_MODULE" >"$STAMP"
}

is_running() {
  local pidfile="$1/minio.pid"
  [[ -f "$pidfile" ]] && kill -0 "$(cat "$pidfile")" 2>/dev/null
}

start() {
  local dir="${1:-}" port="${2:-}"
  [[ -n "$dir" && -n "$port" ]] || die "usage: minio.sh start DIR PORT"
  [[ "$port" =~ ^[0-9]+$ ]] || die "PORT must be a number, got '$port'"
  local console_port="${MINIO_CONSOLE_PORT:-$((port + 1))}"
  [[ -x "$MINIO_BIN" ]] || build
  mkdir -p "$dir/data"
  dir="$(cd "$dir" && pwd)"
  if is_running "$dir"; then
    die "a MinIO server started with $dir is already running (pid $(cat "$dir/minio.pid"))"
  fi
  local endpoint="http://127.0.0.1:$port"
  MINIO_ROOT_USER="${MINIO_ROOT_USER:-tender}" \
    MINIO_ROOT_PASSWORD="${MINIO_ROOT_PASSWORD:-tender-secret-key}" \
    MINIO_BROWSER=off \
    MINIO_UPDATE=off \
    MINIO_CALLHOME_ENABLE=off \
    nohup "$MINIO_BIN" server --quiet --address "127.0.0.1:$port" --console-address "127.0.0.1:$console_port" \
    "$dir/data" >>"$dir/minio.log" 2>&1 </dev/null &
  local pid=$!
  echo "$pid" >"$dir/minio.pid"
  local deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null --max-time 2 "$endpoint/minio/health/live" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
      rm -f "$dir/minio.pid"
      tail -n 20 "$dir/minio.log" >&2 || true
      die "MinIO exited during start-up (log: $dir/minio.log)"
    fi
    if ((SECONDS >= deadline)); then
      kill "$pid" 2>/dev/null || true
      rm -f "$dir/minio.pid"
      tail -n 20 "$dir/minio.log" >&2 || true
      die "MinIO did not answer on $endpoint within 60 s (log: $dir/minio.log)"
    fi
    sleep 0.2
  done
  echo "$endpoint"
}

stop() {
  local dir="${1:-}"
  [[ -n "$dir" ]] || die "usage: minio.sh stop DIR"
  local pidfile="$dir/minio.pid"
  [[ -f "$pidfile" ]] || return 0
  local pid
  pid="$(cat "$pidfile")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then kill -9 "$pid" 2>/dev/null || true; fi
  fi
  rm -f "$pidfile"
}

case "${1:-}" in
  build) build ;;
  start) shift; start "$@" ;;
  stop) shift; stop "$@" ;;
  *) die "usage: minio.sh build | start DIR PORT | stop DIR" ;;
esac
