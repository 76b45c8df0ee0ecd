#!/usr/bin/env bash
# The CustomResourceDefinitions the Velero data mover works with, from pinned releases, for tests
# that apply them to a real kube-apiserver: Velero's DataUpload, DataDownload (velero.io/v2alpha1),
# Backup, Restore, DeleteBackupRequest (velero.io/v1), and the CSI snapshot API
# (snapshot.storage.k8s.io/v1) that Velero's CSI support relies on.
#
#   scripts/velero-crds.sh fetch    copy them into $TENDER_CRDS_DIR (default
#                                   ~/.cache/tender/velero-crds); a no-op when the pinned versions
#                                   are there (crds.version stamp); prints the directory
#
# The files come from the Go module cache (`go mod download`, through the Go module proxy): Velero's
# module ships config/crd/, the external-snapshotter client module ships config/crd/.
set -euo pipefail

VELERO_MODULE='github.com/vmware-tanzu/velero@v1.17.1'
SNAPSHOTTER_MODULE='github.com/kubernetes-csi/external-snapshotter/client/v8@v8.2.0'
CRDS_DIR="${TENDER_CRDS_DIR:-$HOME/.cache/tender/velero-crds}"
STAMP="$CRDS_DIR/crds.version"
PINS="$VELERO_MODULE $SNAPSHOTTER_MODULE"

die() {
  echo "velero-crds.sh: $*" >&2
  exit 1
}

# The module's directory in the module cache (downloaded if needed).
module_dir() {
  local work dir
  command -v go >/dev/null || die "Go is needed to download $1 through the Go module proxy (install Go >= 1.22)"
  # Outside any module, so a go.mod around the caller does not matter.
  work="$(mktemp -d "${TMPDIR:-/tmp}/velero-crds.XXXXXX")"
  if ! dir="$(cd "$work" && GOFLAGS=-mod=mod go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"; then
    rm -rf "$work"
    die "go mod download $1 failed"
  fi
  rm -rf "$work"
  [[ -d "$dir" ]] || die "go mod download $1 gave no module directory"
  echo "$dir"
}

fetch() {
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" ]]; then
    echo "$CRDS_DIR"
    return 0
  fi
  local velero snapshotter tmp f
  mkdir -p "$(dirname "$CRDS_DIR")"
  # One fetch at a time (test files start in parallel); the second finds the stamp.
  exec 9>"$CRDS_DIR.lock"
  flock 9
  if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$PINS" ]]; then
    echo "$CRDS_DIR"
    return 0
  fi
  velero="$(module_dir "$VELERO_MODULE")"
  snapshotter="$(module_dir "$SNAPSHOTTER_MODULE")"
  tmp="$(mktemp -d "$CRDS_DIR.tmp.XXXXXX")"
  for f in \
    "$velero/config/crd/v2alpha1/bases/velero.io_datauploads.yaml" \
    "$velero/config/crd/v2alpha1/bases/velero.io_datadownloads.yaml" \
    "$velero/config/crd/v1/bases/velero.io_backups.yaml" \
    "$velero/config/crd/v1/bases/velero.io_restores.yaml" \
    "$velero/config/crd/v1/bases/velero.io_deletebackuprequests.yaml" \
    "$snapshotter/config/crd/snapshot.storage.k8s.io_volumesnapshots.yaml" \
    "$snapshotter/config/crd/snapshot.storage.k8s.io_volumesnapshotcontents.yaml" \
    "$snapshotter/config/crd/snapshot.storage.k8s.io_volumesnapshotclasses.yaml"; do
    [[ -f "$f" ]] || { rm -rf "$tmp"; die "$f is missing from the module (a different release layout?)"; }
    cp "$f" "$tmp/"
  done
  chmod -R u+w "$tmp"
  echo "$PINS" >"$tmp/crds.version"
  rm -rf "$CRDS_DIR"
  mv "$tmp" "$CRDS_DIR"
  echo "$CRDS_DIR"
}

case "${1:-}" in
  fetch) fetch ;;
  *) die "usage: velero-crds.sh fetch" ;;
esac
