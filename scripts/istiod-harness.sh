#!/usr/bin/env bash
# Conformance harness: Istio's own config-source client (pkg/adsc) and real istiod releases against cloudmap-mcp.
#
#   scripts/istiod-harness.sh [--build-only] [extra go test flags, e.g. -run TestADSC]
#
# Needs only Go and the Go module proxy. It builds pilot-discovery (istiod) for each selected Istio release
# from tests/istiod/pilot/<version>/{go.mod,go.sum} and caches the binary under $CLOUDMAP_MCP_ISTIOD_CACHE,
# so later runs skip the build. Everything listens on 127.0.0.1 only.
#
# Environment:
#   CLOUDMAP_MCP_BIN           cloudmap-mcp binary            (default: target/debug/cloudmap-mcp)
#   ISTIOD_VERSIONS            comma-separated Istio releases (default: 1.31.1,1.22.1; "none": adsc test only)
#   CLOUDMAP_MCP_ISTIOD_CACHE  built istiod binaries and logs (default: target/istiod)
#   ISTIOD_HARNESS_TIMEOUT     go test timeout                (default: 80m)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CLOUDMAP_MCP_BIN="${CLOUDMAP_MCP_BIN:-$root/target/debug/cloudmap-mcp}"
export CLOUDMAP_MCP_ISTIOD_CACHE="${CLOUDMAP_MCP_ISTIOD_CACHE:-$root/target/istiod}"
export ISTIOD_VERSIONS="${ISTIOD_VERSIONS:-1.31.1,1.22.1}"
timeout="${ISTIOD_HARNESS_TIMEOUT:-80m}"

if [[ "${1:-}" == "--build-only" ]]; then
  shift
  export CLOUDMAP_MCP_ISTIOD_BUILD_ONLY=1
fi

if ! command -v go >/dev/null 2>&1; then
  echo "istiod-harness: Go is required (go command not found)" >&2
  exit 2
fi
if [[ "${CLOUDMAP_MCP_ISTIOD_BUILD_ONLY:-}" != 1 && ! -x "$CLOUDMAP_MCP_BIN" ]]; then
  echo "istiod-harness: cloudmap-mcp binary not found at $CLOUDMAP_MCP_BIN (run cargo build, or set CLOUDMAP_MCP_BIN)" >&2
  exit 2
fi
case "$CLOUDMAP_MCP_BIN" in /*) ;; *) CLOUDMAP_MCP_BIN="$PWD/$CLOUDMAP_MCP_BIN" ;; esac

mkdir -p "$CLOUDMAP_MCP_ISTIOD_CACHE"
echo "istiod-harness: server=$CLOUDMAP_MCP_BIN istiod versions=$ISTIOD_VERSIONS cache=$CLOUDMAP_MCP_ISTIOD_CACHE ($(go version))"
cd "$root/tests/istiod"
export GOWORK=off
start=$SECONDS
set +e
go test -count=1 -timeout "$timeout" -v ./... "$@"
rc=$?
set -e
echo "istiod-harness: finished in $((SECONDS - start))s (exit $rc)"
exit $rc
