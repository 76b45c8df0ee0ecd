#!/usr/bin/env bash
# Kopia, for the side-by-side benchmark (bench/run.mjs).
#
#   scripts/kopia.sh build     build the pinned kopia into $TENDER_TOOLS_DIR (default ~/.cache/tender/bin)
#   scripts/kopia.sh path      print the path of the binary (building it first if needed)
#
# `go install github.com/kopia/kopia@VERSION` fails on the Go module proxy (its deprecation lookup of
# @v/list is refused), so this builds from a throwaway module instead:
#   go mod init kbuild && go get github.com/kopia/kopia@VERSION && go build github.com/kopia/kopia
# That takes several minutes and ~2 GiB of module cache the first time.
#
# TENDER_KOPIA_PREBUILT=/path/to/kopia copies an existing build (of the same version) instead.
set -euo pipefail

KOPIA_VERSION='v0.22.3'
KOPIA_MODULE='github.com/kopia/kopia'
TOOLS_DIR="${TENDER_TOOLS_DIR:-$HOME/.cache/tender/bin}"
KOPIA_BIN="$TOOLS_DIR/kopia"
# Marks which version the binary in TOOLS_DIR came from, so a pin change rebuilds it.
STAMP="$TOOLS_DIR/kopia.version"

die() {
  echo "kopia.sh: $*" >&2
  exit 1
}

build() {
  if [[ -x "$KOPIA_BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$KOPIA_MODULE@$KOPIA_VERSION" ]]; then
    return 0
  fi
  mkdir -p "$TOOLS_DIR"
  # Absolute, since the build runs in another directory.
  TOOLS_DIR="$(cd "$TOOLS_DIR" && pwd)"
  KOPIA_BIN="$TOOLS_DIR/kopia"
  STAMP="$TOOLS_DIR/kopia.version"
  local tmpbin="$KOPIA_BIN.tmp.$$"
  if [[ -n "${TENDER_KOPIA_PREBUILT:-}" ]]; then
    [[ -x "$TENDER_KOPIA_PREBUILT" ]] || die "TENDER_KOPIA_PREBUILT=$TENDER_KOPIA_PREBUILT is not an executable file"
    cp "$TENDER_KOPIA_PREBUILT" "$tmpbin"
  else
    command -v go >/dev/null || die "Go is needed to build kopia (install Go >= 1.24, or set TENDER_KOPIA_PREBUILT)"
    echo "kopia.sh: building $KOPIA_MODULE@$KOPIA_VERSION (takes several minutes the first time)" >&2
    local work
    work="$(mktemp -d "${TMPDIR:-/tmp}/kopia-build.XXXXXX")"
    # shellcheck disable=SC2064
    trap "rm -rf '$work' '$work.log' '$tmpbin'" EXIT
    # go get lists every module it adds: keep that in a log, shown only on failure.
    if ! (
      cd "$work"
      export GOFLAGS="${GOFLAGS:--buildvcs=false}"
      # (errexit does not apply inside a subshell that is tested, hence the &&)
      go mod init kbuild &&
        go get "$KOPIA_MODULE@$KOPIA_VERSION" &&
        go build -trimpath \
          -ldflags "-s -w -X github.com/kopia/kopia/repo.BuildVersion=${KOPIA_VERSION#v} -X github.com/kopia/kopia/repo.BuildInfo=tender-bench" \
          -o "$tmpbin" "$KOPIA_MODULE"
    ) >"$work.log" 2>&1; then
      tail -n 30 "$work.log" >&2
      rm -f "$work.log"
      die "building $KOPIA_MODULE@$KOPIA_VERSION failed"
    fi
    rm -rf "$work" "$work.log"
    trap - EXIT
  fi
  chmod +x "$tmpbin"
  mv -f "$tmpbin" "$KOPIA_BIN"
  echo "$KOPIA_MODULE@$KOPIA_VERSION" >"$STAMP"
}

case "${1:-}" in
  build) build ;;
  path) build && echo "$KOPIA_BIN" ;;
  *) die "usage: kopia.sh build | path" ;;
esac
