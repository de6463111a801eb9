#!/usr/bin/env bash
# Conformance harness: Istio's own config-source client (pkg/adsc) and real istiod releases against cloudmap-mcp.
#
#   scripts/istiod-harness.sh [--build-only] [extra go test flags, e.g. -run TestADSC]
#
# Needs only Go and the Go module proxy. It builds pilot-discovery (istiod) for each selected Istio release
# series from tests/istiod/pilot/<series>/{go.mod,go.sum} (PIN there names the commit) and caches the binary
# under $CLOUDMAP_MCP_ISTIOD_CACHE, so later runs skip the build. Everything listens on 127.0.0.1 only.
#
# Before any test it downloads every module the harness and the selected builds need (`go mod download`). A
# pinned version the proxy no longer serves stops the run there with one line naming the module, the version
# and the build module that pins it; scripts/istiod-pin.sh moves such a pin.
#
# Environment:
#   CLOUDMAP_MCP_BIN           cloudmap-mcp binary            (default: target/debug/cloudmap-mcp)
#   ISTIOD_VERSIONS            comma-separated Istio release series (default: 1.31,1.22; "none": adsc test only)
#   CLOUDMAP_MCP_ISTIOD_CACHE  built istiod binaries and logs (default: target/istiod)
#   ISTIOD_HARNESS_TIMEOUT     go test timeout                (default: 80m)
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
export CLOUDMAP_MCP_BIN="${CLOUDMAP_MCP_BIN:-$root/target/debug/cloudmap-mcp}"
export CLOUDMAP_MCP_ISTIOD_CACHE="${CLOUDMAP_MCP_ISTIOD_CACHE:-$root/target/istiod}"
export ISTIOD_VERSIONS="${ISTIOD_VERSIONS:-1.31,1.22}"
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
export GOWORK=off
start=$SECONDS

# The build modules of the selected series, then the harness module itself.
modules=()
case "${ISTIOD_VERSIONS// /}" in
  none) ;;
  all | "") for d in "$root"/tests/istiod/pilot/*/; do modules+=("${d%/}"); done ;;
  *)
    IFS=, read -r -a series <<<"${ISTIOD_VERSIONS// /}"
    for v in "${series[@]}"; do
      if [[ ! -f "$root/tests/istiod/pilot/$v/go.mod" ]]; then
        echo "istiod-harness: ISTIOD_VERSIONS names $v, but there is no build module tests/istiod/pilot/$v (have: $(cd "$root/tests/istiod/pilot" && ls | paste -sd, -))" >&2
        exit 2
      fi
      modules+=("$root/tests/istiod/pilot/$v")
    done
    ;;
esac
modules+=("$root/tests/istiod")

# Every module each one needs must download; the first that does not ends the run with one line.
for m in "${modules[@]}"; do
  t0=$SECONDS
  rel="${m#"$root"/}"
  # `go mod download` appends checksums of every module in the graph to go.sum: keep the file as committed.
  cp "$m/go.sum" "$m/go.sum.preflight"
  ok=0
  out="$(cd "$m" && go mod download -json 2>&1)" || ok=$?
  mv "$m/go.sum.preflight" "$m/go.sum"
  if [[ $ok -eq 0 ]]; then
    echo "istiod-harness: modules of $rel downloaded ($((SECONDS - t0))s)"
    continue
  fi
  line="$(printf '%s' "$out" | python3 -c '
import json, re, sys
text = sys.stdin.read()
dec, i, bad = json.JSONDecoder(), 0, None
while i < len(text):
    j = text.find("{", i)
    if j < 0: break
    try:
        obj, i = dec.raw_decode(text, j)
    except ValueError:
        i = j + 1; continue
    if obj.get("Error"):
        bad = obj; break
if bad:
    why = bad["Error"].split("\n")
    reason = why[0].split(": ")[-1] + ("; " + why[1].strip() if len(why) > 1 else "")
    print("%s@%s cannot be downloaded (%s)" % (bad["Path"], bad["Version"], reason))
else:
    m = re.search(r"go: (\S+?)@(\S+?): (.*)", text)
    print("%s@%s cannot be downloaded (%s)" % (m.group(1), m.group(2), m.group(3).split(": ")[-1]) if m else
          "go mod download failed: " + " ".join(text.split())[:300])
')"
  series="$(basename "$m")"
  hint="scripts/istiod-pin.sh $series"
  [[ "$m" == "$root/tests/istiod" ]] && hint="scripts/istiod-pin.sh on the newest series (its PIN says harness: yes)"
  echo "istiod-harness: $line, pinned by $rel/go.mod; move the pin with $hint" >&2
  exit 3
done

cd "$root/tests/istiod"
set +e
go test -count=1 -timeout "$timeout" -v ./... "$@"
rc=$?
set -e
echo "istiod-harness: finished in $((SECONDS - start))s (exit $rc)"
exit $rc
