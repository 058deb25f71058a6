#!/usr/bin/env bash
# HTTP throughput and latency with and without `AuthLayer`, measured by wrk: the quickstart
# route behind the layer and the same route without it (examples/loadgen.rs --serve), the
# servers pinned to core 0 and wrk to core 1, so the client does not share the server's core.
# Three rounds; each round runs both servers, in alternating order, for DURATION seconds each.
# Prints each run and the median over rounds of the ratios auth / no auth (throughput, p50,
# p99). Called by benches/report.sh; runs alone too.
#
#   benches/wrk.sh                 # 3 rounds of 5 s per server
#   ROUNDS=5 DURATION=10 benches/wrk.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${ROUNDS:-3}
duration=${DURATION:-5}
connections=${CONNECTIONS:-16}

if ! command -v wrk >/dev/null 2>&1; then
  echo "wrk: not installed; trying apt-get" >&2
  apt-get install -y wrk >/dev/null 2>&1 || true
fi
if ! command -v wrk >/dev/null 2>&1; then
  echo "| HTTP (wrk) | skipped: wrk is not installed (apt-get install wrk) |"
  exit 0
fi

cargo build --release --quiet --example loadgen
log=$(mktemp)
serve_for=$((rounds * 2 * (duration + 2) + 10))
taskset -c 0 target/release/examples/loadgen --serve --seconds "$serve_for" >"$log" &
server=$!
trap 'kill $server 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 50); do
  grep -q '^token:' "$log" && break
  sleep 0.1
done
auth_url=$(awk '/^auth:/ {print $2}' "$log")
plain_url=$(awk '/^no auth:/ {print $3}' "$log")
token=$(awk '/^token:/ {print $2}' "$log")
if [ -z "$auth_url" ] || [ -z "$plain_url" ] || [ -z "$token" ]; then
  echo "wrk: loadgen did not print its URLs" >&2
  cat "$log" >&2
  exit 1
fi

# One wrk run: "requests_per_second p50_us p99_us non_2xx".
measure() {
  local out
  out=$(taskset -c 1 wrk -t1 -c"$connections" -d"${duration}s" --latency \
    -H "Authorization: Bearer $token" "$1")
  echo "$out" | awk '
    function us(v) {
      if (v ~ /us$/) { sub(/us$/, "", v); return v }
      if (v ~ /ms$/) { sub(/ms$/, "", v); return v * 1000 }
      if (v ~ /s$/)  { sub(/s$/, "", v);  return v * 1000000 }
      return v
    }
    /Requests\/sec:/ { rps = $2 }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    /Non-2xx or 3xx responses:/ { bad = $5 }
    END { printf "%s %s %s %s\n", rps, p50, p99, (bad == "" ? 0 : bad) }'
}

results=$(mktemp)
for round in $(seq "$rounds"); do
  # Alternate which server goes first, so drift within a round falls on both.
  if [ $((round % 2)) -eq 1 ]; then order="auth plain"; else order="plain auth"; fi
  for which in $order; do
    if [ "$which" = auth ]; then url=$auth_url; else url=$plain_url; fi
    echo "$round $which $(measure "$url")" >>"$results"
  done
done

python3 - "$results" "$connections" "$duration" <<'PY'
import statistics, sys
rows = [line.split() for line in open(sys.argv[1])]
runs = {}
for rnd, which, rps, p50, p99, bad in rows:
    runs.setdefault(int(rnd), {})[which] = (float(rps), float(p50), float(p99), int(bad))
print(f"| round | auth req/s | no auth req/s | ratio | auth p50 / p99 µs | no auth p50 / p99 µs |")
print("|---|---|---|---|---|---|")
ratios = {"rps": [], "p50": [], "p99": []}
bad = 0
for rnd in sorted(runs):
    a, p = runs[rnd]["auth"], runs[rnd]["plain"]
    bad += a[3] + p[3]
    ratios["rps"].append(a[0] / p[0])
    ratios["p50"].append(a[1] / p[1])
    ratios["p99"].append(a[2] / p[2])
    print(f"| {rnd} | {a[0]:,.0f} | {p[0]:,.0f} | {a[0]/p[0]:.3f} | {a[1]:.0f} / {a[2]:.0f} | {p[1]:.0f} / {p[2]:.0f} |")
med = {k: statistics.median(v) for k, v in ratios.items()}
target = med["rps"] >= 0.95
print()
print(f"| HTTP (wrk -t1 -c{sys.argv[2]}, {sys.argv[3]} s, server core 0, wrk core 1) | "
      f"throughput auth / no auth, median of {len(runs)}: {med['rps']:.3f} "
      f"({'met' if target else 'MISSED'}: target ≥ 0.95) | p50 {med['p50']:.2f}×, p99 {med['p99']:.2f}× |")
if bad:
    print(f"| HTTP (wrk) | {bad} responses were not 2xx: the figures are not of the route |")
    sys.exit(1)
PY
rm -f "$results"
