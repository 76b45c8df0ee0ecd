#!/usr/bin/env bash
# The helm CLI, for rendering and linting charts/tender in the tests (test/helm.test.ts).
#
#   scripts/helm.sh build     install the pinned helm into $TENDER_TOOLS_DIR (default ~/.cache/tender/bin)
#   scripts/helm.sh path      print the path of that binary (building it first if it is missing)
#
# Built from the Go module proxy like scripts/minio.sh builds MinIO (Go >= 1.26, the module's go
# directive). CGO off and the version stamped in, as helm's own Makefile does. The first build
# takes several minutes on two cores; later calls return at once while the pin is unchanged.
# TENDER_HELM_PREBUILT may name a helm binary of the same pinned version to copy instead.
set -euo pipefail

HELM_VERSION='v4.3.2'
HELM_MODULE="helm.sh/helm/v4/cmd/helm@$HELM_VERSION"
TOOLS_DIR="${TENDER_TOOLS_DIR:-$HOME/.cache/tender/bin}"
HELM_BIN="$TOOLS_DIR/helm"
# Marks which module version the binary in TOOLS_DIR came from, so a pin change rebuilds it.
STAMP="$TOOLS_DIR/helm.version"

die() {
  echo "helm.sh: $*" >&2
  exit 1
}

build() {
  if [[ -x "$HELM_BIN" && -f "$STAMP" && "$(cat "$STAMP")" == "$HELM_MODULE" ]]; then
    return 0
  fi
  mkdir -p "$TOOLS_DIR"
  if [[ -n "${TENDER_HELM_PREBUILT:-}" && -x "${TENDER_HELM_PREBUILT}" ]]; then
    "$TENDER_HELM_PREBUILT" version --template '{{.Version}}' | grep -qx "$HELM_VERSION" ||
      die "TENDER_HELM_PREBUILT ($TENDER_HELM_PREBUILT) is not helm $HELM_VERSION"
    cp "$TENDER_HELM_PREBUILT" "$HELM_BIN.tmp.$$"
  else
    command -v go >/dev/null || die "Go is needed to build helm (install Go >= 1.26, or set TENDER_HELM_PREBUILT)"
    echo "helm.sh: building $HELM_MODULE (takes a few minutes the first time)" >&2
    local gobin
    gobin="$(mktemp -d "$TOOLS_DIR/.gobin.XXXXXX")"
    if ! CGO_ENABLED=0 GOBIN="$gobin" GOFLAGS="${GOFLAGS:--buildvcs=false}" go install -trimpath \
      -ldflags "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION" "$HELM_MODULE" >&2; then
      rm -rf "$gobin"
      die "go install $HELM_MODULE failed"
    fi
    mv "$gobin/helm" "$HELM_BIN.tmp.$$"
    rm -rf "$gobin"
  fi
  chmod +x "$HELM_BIN.tmp.$$"
  mv -f "$HELM_BIN.tmp.$$" "$HELM_BIN"
  echo "$HELM_MODULE" >"$STAMP"
}

case "${1:-}" in
  build) build ;;
  path) build; echo "$HELM_BIN" ;;
  *) die "usage: helm.sh build | path" ;;
esac
