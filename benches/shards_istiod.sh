#!/usr/bin/env bash
# --shards N against a real istiod 1.31 with N xds:// config sources (docs/sharding.md).
#
#   benches/shards_istiod.sh N [SERVICES] [INSTANCES] [CHANGES]     (default 10000 10 5)
#
# Starts `serve --shards N` on a registry from scripts/gen-registry.py, then pilot-discovery with a
# mesh config listing the N ports, as the `istiod` group of `cargo bench --bench scale` runs it (no
# Kubernetes). Prints the full sync time (istiod started → every source's ServiceEntries logged and
# its caches synced), then per isolated change (one service's address, always the same service):
# the bytes pushed (cloudmap_mcp_shard_push_bytes_total), istiod's CPU until it is quiet for 1 s,
# and istiod's RSS growth.
#
# Binaries: $CLOUDMAP_MCP_BIN (default target/debug/cloudmap-mcp); pilot-discovery from
# $CLOUDMAP_MCP_ISTIOD_BIN, else $CLOUDMAP_MCP_ISTIOD_CACHE/1.31/pilot-discovery (default
# target/istiod, built by scripts/istiod-harness.sh --build-only). Needs curl and bc.
set -u
N=$1; SVC=${2:-10000}; PER=${3:-10}; CH=${4:-5}
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN=${CLOUDMAP_MCP_BIN:-$ROOT/target/debug/cloudmap-mcp}
ISTIOD=${CLOUDMAP_MCP_ISTIOD_BIN:-${CLOUDMAP_MCP_ISTIOD_CACHE:-$ROOT/target/istiod}/1.31/pilot-discovery}
[ -x "$BIN" ] || { echo "no server binary at $BIN (cargo build, or set CLOUDMAP_MCP_BIN)" >&2; exit 2; }
[ -x "$ISTIOD" ] || { echo "no pilot-discovery at $ISTIOD (scripts/istiod-harness.sh --build-only)" >&2; exit 2; }
D=$(mktemp -d)
python3 "$ROOT/scripts/gen-registry.py" "$SVC" "$PER" "$D/reg.yaml" 0
base=$((21000 + N * 40)); adm=$((base + 30)); mon=$((base + 35))
"$BIN" --log-format json serve --registry-file "$D/reg.yaml" --grpc-addr "127.0.0.1:$base" \
  --admin-addr "127.0.0.1:$adm" --shards "$N" --registry-poll-interval 100ms --istio-namespace istio-system 2>"$D/serve.log" &
SP=$!
IP=""
trap 'kill $SP $IP 2>/dev/null; wait 2>/dev/null; rm -rf "$D"' EXIT
until curl -sf "127.0.0.1:$adm/readyz" >/dev/null; do
  sleep 0.5; kill -0 $SP 2>/dev/null || { tail "$D/serve.log"; exit 1; }
done
{ echo "configSources:"; for i in $(seq 0 $((N - 1))); do echo "- address: xds://127.0.0.1:$((base + i))"; done; } >"$D/mesh.yaml"
echo "networks: {}" >"$D/net.yaml"
cd "$D"
: >"$D/istiod.log"
T0=$(date +%s.%N)
POD_NAMESPACE=istio-system POD_NAME=istiod-0 ENABLE_CA_SERVER=false PILOT_ENABLE_ANALYSIS=false KUBECONFIG="$D/none" \
ISTIOD_CONFORMANCE_FAKE_KUBE=1 "$ISTIOD" discovery --registries= --meshConfig="$D/mesh.yaml" --networksConfig="$D/net.yaml" \
  --secureGRPCAddr= --grpcAddr="127.0.0.1:$((base + 36))" --httpAddr="127.0.0.1:$((base + 37))" \
  --httpsAddr="127.0.0.1:$((base + 38))" --monitoringAddr="127.0.0.1:$mon" --ctrlz_address=127.0.0.1 \
  --ctrlz_port=$((base + 39)) --domain=cluster.local --shutdownDuration=1s \
  --log_output_level=default:info,adsc:info >"$D/istiod.log" 2>&1 &
IP=$!
received() { grep -c 'Received.*type=networking.istio.io/v1/ServiceEntry' "$D/istiod.log"; }
until [ "$(received)" -ge "$N" ] && grep -q "All controller caches have been synced up" "$D/istiod.log"; do
  sleep 0.1; kill -0 $IP 2>/dev/null || { tail -20 "$D/istiod.log"; exit 1; }
done
echo "N=$N services=$SVC instances=$PER sync_s=$(echo "$(date +%s.%N) - $T0" | bc)"
sleep 3
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$IP/stat"; }
rss() { awk '/VmRSS/{print $2}' "/proc/$IP/status"; }
pushed() { curl -s "127.0.0.1:$adm/metrics" | awk '/^cloudmap_mcp_shard_push_bytes_total/{s += $2} END {print s + 0}'; }
for g in $(seq 1 "$CH"); do
  r0=$(received); c0=$(cpu); m0=$(rss); b0=$(pushed)
  # Generations 1234 + k×SVC all move the same service, each to another address: one change each.
  python3 "$ROOT/scripts/gen-registry.py" "$SVC" "$PER" "$D/reg.yaml" $((1234 + g * SVC))
  until [ "$(received)" -gt "$r0" ]; do sleep 0.05; done
  last=$(cpu); while sleep 1; now=$(cpu); [ "$now" -gt $((last + 1)) ]; do last=$now; done
  c1=$(cpu); m1=$(rss); b1=$(pushed)
  echo "N=$N change=$g bytes=$((b1 - b0)) istiod_cpu_ms=$(((c1 - c0) * 1000 / tck)) istiod_rss_growth_kb=$((m1 - m0)) responses=$(($(received) - r0))"
done
