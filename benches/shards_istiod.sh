#!/usr/bin/env bash
# --shards N against a real istiod 1.31 with N xds:// config sources (docs/sharding.md, BENCHMARKS.md).
#
#   benches/shards_istiod.sh [SERVICES] [INSTANCES] [CHANGES] [SYNC_ROUNDS]     (default 10000 10 24 3)
#
#   SHARDS="1 4 16"   the shard counts to compare (the first is the baseline of the ratio column)
#
# For each N: `serve --shards N` on a registry from scripts/gen-registry.py, then a cold
# pilot-discovery with a mesh config listing the N ports (no Kubernetes, as the `istiod` group of
# `cargo bench --bench scale` runs it). SYNC_ROUNDS rounds, each starting every N once in turn, so
# the N share the machine's noise; the table gives each N's median. The last round then makes
# CHANGES isolated changes (one service's address, always the same service) and takes their mean.
#
# Full sync is measured twice, from istiod's start:
#   ready    istiod marks itself ready (its /ready answers 200): every source has sent its first
#            response AND the push context holds every update, so a proxy connecting now gets all
#            SERVICES. The figure users wait for (a rollout of istiod waits for it too).
#   synced   istiod's "All controller caches have been synced up" line: every source's first
#            response is in its store. istiod may still be indexing them (with one source it is;
#            with many the first shards are indexed while the last ones arrive), so this line
#            comes at a different point of the work for each N: it is shown, not compared.
# Per change: the bytes pushed (cloudmap_mcp_shard_push_bytes_total), istiod's CPU until it has
# been quiet for 1 s, istiod's RSS growth.
# istiod's CPU includes its garbage collections where they fell: each change leaves garbage that a
# later collection pays for, and a collection costs about the live heap, so one lands every few
# changes with one source (24 MB decoded each) and every few dozen with 16. The mean is over
# CHANGES changes for that reason, and the table says how many collections ran
# (go_gc_duration_seconds_count on istiod's monitoring port).
#
# SHARDS_BENCH_LOGS=DIR keeps each run's server and istiod logs there.
#
# Binaries: $CLOUDMAP_MCP_BIN (default target/release/cloudmap-mcp, else target/debug); pilot-discovery
# from $CLOUDMAP_MCP_ISTIOD_BIN, else $CLOUDMAP_MCP_ISTIOD_CACHE/1.31/pilot-discovery (default
# target/istiod, built by scripts/istiod-harness.sh --build-only). Needs curl, python3 and awk.
set -u
SVC=${1:-10000}; PER=${2:-10}; CH=${3:-24}; ROUNDS=${4:-3}
read -r -a NS <<<"${SHARDS:-1 4 16}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
BIN=${CLOUDMAP_MCP_BIN:-}
if [ -z "$BIN" ]; then
  BIN=$ROOT/target/release/cloudmap-mcp; [ -x "$BIN" ] || BIN=$ROOT/target/debug/cloudmap-mcp
fi
ISTIOD=${CLOUDMAP_MCP_ISTIOD_BIN:-${CLOUDMAP_MCP_ISTIOD_CACHE:-$ROOT/target/istiod}/1.31/pilot-discovery}
[ -x "$BIN" ] || { echo "no server binary at $BIN (cargo build --release, or set CLOUDMAP_MCP_BIN)" >&2; exit 2; }
[ -x "$ISTIOD" ] || { echo "no pilot-discovery at $ISTIOD (scripts/istiod-harness.sh --build-only)" >&2; exit 2; }
for t in curl python3 awk; do command -v $t >/dev/null || { echo "needs $t" >&2; exit 2; }; done

D=$(mktemp -d)
SP=""; IP=""
stop() { # stop PID: SIGTERM, then wait for it
  [ -n "$1" ] || return 0
  kill "$1" 2>/dev/null; wait "$1" 2>/dev/null
}
trap 'stop "$IP"; stop "$SP"; rm -rf "$D"' EXIT
python3 "$ROOT/scripts/gen-registry.py" "$SVC" "$PER" "$D/reg.yaml" 0
echo "networks: {}" >"$D/net.yaml"
tck=$(getconf CLK_TCK)
cpu() { awk '{print $14 + $15}' "/proc/$IP/stat"; }
rss() { awk '/VmRSS/{print $2}' "/proc/$IP/status"; }
received() { grep -c 'Received.*type=networking.istio.io/v1/ServiceEntry' "$D/istiod.log"; }
# seconds from T0 to the first log line matching $1 (istiod logs UTC RFC 3339 with microseconds)
since_t0() {
  local ts; ts=$(grep -m1 "$1" "$D/istiod.log" | cut -f1)
  [ -n "$ts" ] && echo "$(date -d "$ts" +%s.%N) $T0" | awk '{printf "%.3f", $1 - $2}'
}
die() { echo "shards_istiod: $*" >&2; tail -20 "$D/istiod.log" >&2; exit 1; }
# deadline SECONDS, then in_time: true until SECONDS have passed
deadline() { WAIT_END=$(($(date +%s) + $1)); }
in_time() { [ "$(date +%s)" -lt "$WAIT_END" ]; }

start_server() { # N
  local n=$1
  base=$((21000 + n * 40)); adm=$((base + 30)); mon=$((base + 35))
  "$BIN" --log-format json serve --registry-file "$D/reg.yaml" --grpc-addr "127.0.0.1:$base" \
    --admin-addr "127.0.0.1:$adm" --shards "$n" --registry-poll-interval 100ms --istio-namespace istio-system \
    2>"$D/serve-$n.log" &
  SP=$!
  deadline 120
  until curl -sf "127.0.0.1:$adm/readyz" >/dev/null; do
    sleep 0.2; kill -0 "$SP" 2>/dev/null && in_time || { echo "shards_istiod: server (N=$n) not ready" >&2; tail "$D/serve-$n.log" >&2; exit 1; }
  done
  { echo "configSources:"; for i in $(seq 0 $((n - 1))); do echo "- address: xds://127.0.0.1:$((base + i))"; done; } >"$D/mesh.yaml"
}

start_istiod() { # cold istiod on the current server; sets T0, IP
  : >"$D/istiod.log"
  T0=$(date +%s.%N)
  (cd "$D" && POD_NAMESPACE=istio-system POD_NAME=istiod-0 ENABLE_CA_SERVER=false PILOT_ENABLE_ANALYSIS=false \
    KUBECONFIG="$D/none" ISTIOD_CONFORMANCE_FAKE_KUBE=1 exec "$ISTIOD" discovery --registries= \
    --meshConfig="$D/mesh.yaml" --networksConfig="$D/net.yaml" --secureGRPCAddr= \
    --grpcAddr="127.0.0.1:$((base + 36))" --httpAddr="127.0.0.1:$((base + 37))" \
    --httpsAddr="127.0.0.1:$((base + 38))" --monitoringAddr="127.0.0.1:$mon" --ctrlz_address=127.0.0.1 \
    --ctrlz_port=$((base + 39)) --domain=cluster.local --shutdownDuration=1s \
    --log_output_level=default:info,adsc:info >"$D/istiod.log" 2>&1) &
  IP=$!
}

sync_once() { # N: writes "ready synced cpu_ms" to $D/sync (runs in this shell: it sets IP)
  local n=$1 c
  start_istiod
  deadline 300
  until curl -sf "127.0.0.1:$((base + 37))/ready" >/dev/null; do
    sleep 0.05; kill -0 "$IP" 2>/dev/null || die "istiod (N=$n) exited"; in_time || die "istiod (N=$n) not ready in 300 s"
  done
  c=$(cpu)
  [ "$(received)" -ge "$n" ] || die "istiod ready with $(received) of $n sources"
  grep -q "Pushing Services:$SVC " "$D/istiod.log" || die "istiod ready without a push context of $SVC services"
  echo "$(since_t0 'marking server ready') $(since_t0 'All controller caches have been synced up') $((c * 1000 / tck))" >"$D/sync"
}

changes() { # N: writes "bytes cpu_ms rss_kb gcs" to $D/changes, means over CH changes (gcs: total)
  local g r0 c0 m0 b0 b1 c1 last now sb=0 sc=0 sm=0 g0
  pushed() { curl -s "127.0.0.1:$adm/metrics" | awk '/^cloudmap_mcp_shard_push_bytes_total/{s += $2} END {printf "%d", s}'; }
  imetric() { curl -s "127.0.0.1:$mon/metrics" | awk -v m="$1" '$1 == m {printf "%d", $2}'; }
  sleep 3
  g0=$(imetric go_gc_duration_seconds_count)
  for g in $(seq 1 "$CH"); do
    r0=$(received); c0=$(cpu); m0=$(rss); b0=$(pushed)
    # Generations 1234 + k×SVC all move the same service, each to another address: one change each.
    python3 "$ROOT/scripts/gen-registry.py" "$SVC" "$PER" "$D/reg.yaml" $((1234 + g * SVC))
    deadline 60
    until [ "$(received)" -gt "$r0" ]; do sleep 0.05; in_time || die "change $g (N=$1) not received by istiod in 60 s"; done
    last=$(cpu); while sleep 1; now=$(cpu); [ "$now" -gt $((last + 1)) ]; do last=$now; done
    b1=$(pushed); c1=$(( ($(cpu) - c0) * 1000 / tck ))
    sb=$((sb + b1 - b0)); sc=$((sc + c1)); sm=$((sm + $(rss) - m0))
    echo "  N=$1 change $g: $((b1 - b0)) bytes, istiod $c1 ms CPU" >&2
  done
  python3 "$ROOT/scripts/gen-registry.py" "$SVC" "$PER" "$D/reg.yaml" 0
  echo "$((sb / CH)) $((sc / CH)) $((sm / CH)) $(( $(imetric go_gc_duration_seconds_count) - g0 ))" >"$D/changes"
}

median() { tr ' ' '\n' | sort -g | awk '{a[NR] = $1} END {if (NR % 2) print a[(NR + 1) / 2]; else printf "%.3f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2}'; }

declare -A READY SYNCED SCPU BYTES CCPU CRSS CGC
echo "server $BIN; istiod $ISTIOD; $SVC services x $PER instances; N = ${NS[*]}; $ROUNDS sync rounds, $CH changes" >&2
for r in $(seq 1 "$ROUNDS"); do
  for n in "${NS[@]}"; do
    start_server "$n"
    sync_once "$n"; read -r rd sy sc <"$D/sync"
    echo "  round $r N=$n: ready ${rd} s, synced ${sy} s, istiod ${sc} ms CPU to ready" >&2
    READY[$n]="${READY[$n]:-} $rd"; SYNCED[$n]="${SYNCED[$n]:-} $sy"; SCPU[$n]="${SCPU[$n]:-} $sc"
    if [ "$r" = "$ROUNDS" ] && [ "$CH" -gt 0 ]; then
      changes "$n"; read -r BYTES[$n] CCPU[$n] CRSS[$n] CGC[$n] <"$D/changes"
    fi
    stop "$IP"; IP=""; stop "$SP"; SP=""
    if [ -n "${SHARDS_BENCH_LOGS:-}" ]; then
      mkdir -p "$SHARDS_BENCH_LOGS"; cp "$D/istiod.log" "$SHARDS_BENCH_LOGS/istiod-N$n-round$r.log"; cp "$D/serve-$n.log" "$SHARDS_BENCH_LOGS/serve-N$n-round$r.log"
    fi
  done
done

first=${NS[0]}; last=${NS[${#NS[@]} - 1]}
row() { # label, array name, ratio target, format
  local label=$1 arr=$2 target=$3 n v vals=() b
  local -n a=$arr
  printf '| %s |' "$label"
  for n in "${NS[@]}"; do
    v=${a[$n]:-}; vals+=("$v")
    printf ' %s |' "${v:--}"
  done
  b=${a[$first]:-}; v=${a[$last]:-}
  if [ -n "$b" ] && [ -n "$v" ] && awk "BEGIN {exit !($b > 0 && $v > 0)}"; then
    awk -v b="$b" -v v="$v" -v t="$target" 'BEGIN {r = v / b; if (r < 1) printf " 1/%.1f | %s |\n", 1 / r, t; else printf " %.2fx | %s |\n", r, t}'
  else
    printf ' - | %s |\n' "$target"
  fi
}
declare -A MREADY MSYNCED MSCPU
for n in "${NS[@]}"; do
  MREADY[$n]=$(echo ${READY[$n]} | median); MSYNCED[$n]=$(echo ${SYNCED[$n]} | median); MSCPU[$n]=$(echo ${SCPU[$n]} | median)
  [ -n "${CRSS[$n]:-}" ] && CRSS[$n]=$(awk -v k="${CRSS[$n]}" 'BEGIN {printf "%.1f", k / 1024}')
done
echo
printf '| %s services x %s instances |' "$SVC" "$PER"; for n in "${NS[@]}"; do printf ' N = %s |' "$n"; done; printf ' N = %s / N = %s | target |\n' "$last" "$first"
printf '|---|'; for n in "${NS[@]}"; do printf -- '---:|'; done; printf -- '---:|---|\n'
row "bytes sent per change" BYTES "<= 1/12"
row "istiod CPU per change (ms, mean of $CH)" CCPU "<= 1/8"
row "istiod garbage collections in those $CH changes" CGC ""
row "istiod RSS growth per change (MB, mean of $CH)" CRSS ""
row "full sync: istiod ready (s, median of $ROUNDS)" MREADY "<= 1.2x"
row "istiod CPU to ready (ms, median of $ROUNDS)" MSCPU ""
row "caches-synced log line (s, median of $ROUNDS)" MSYNCED "(not comparable)"
for n in "${NS[@]}"; do echo "N=$n ready:${READY[$n]} synced:${SYNCED[$n]}"; done
