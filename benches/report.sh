#!/usr/bin/env bash
# Reruns the benchmark suite, the memory example and the HTTP load tests (examples/loadgen
# and benches/wrk.sh), then prints the results table in the format of docs/performance.md. Medians from
# criterion's estimates; ratios against the floor measured in the same process.
#
#   benches/report.sh                 # PostgreSQL group skipped unless the URL is set
#   APITOKEN_TEST_POSTGRES_URL=postgres://postgres@127.0.0.1:5432/test benches/report.sh
set -euo pipefail
cd "$(dirname "$0")/.."
rm -rf target/criterion
cargo bench --bench verify >&2
cargo bench --bench scale >&2
# Uncached SQL lookups against the bare driver, pinned to one core (sqlx's hand-offs between
# threads then do not cross cores), and Sanctum's own work in PHP when PHP is installed.
taskset -c 1 cargo bench --bench sql >&2
php_figures=""
if command -v php >/dev/null && php -m | grep -qi pdo_sqlite; then
    php_figures=$(taskset -c 1 php benches/php/sanctum_pdo.php)
fi
mem=$(cargo run --release --quiet --example memory | awk '/bytes_per_token/ {print $2}')
# HTTP with and without the auth layer, loopback only, bounded (20,000 requests or 5 s a run).
http=$(cargo run --release --quiet --example loadgen -- --requests 20000 --seconds 5 | tee /dev/stderr | grep '^| HTTP')
# The same with wrk, pinned: servers on core 0, wrk on core 1, three alternating rounds.
wrk_table=$(benches/wrk.sh)

python3 - "$mem" "$php_figures" <<'PY'
import json, os, re, sys
root = "target/criterion"
def med(name):
    path = os.path.join(root, name, "new", "estimates.json")
    if not os.path.exists(path):
        # Criterion writes an ungrouped id with slashes as one directory with underscores.
        path = os.path.join(root, name.replace("/", "_"), "new", "estimates.json")
    if not os.path.exists(path):
        return None
    return json.load(open(path))["median"]["point_estimate"]
floor = med("floor")
def row(target, name, figure, ratio, ok):
    print(f"| {target} | {name} | {figure} | {ratio} | {'met' if ok else 'MISSED'} |")
def ns(v): return f"{v:,.0f} ns"
print(f"floor (median): {floor:.0f} ns\n")
print("| target | benchmark | median | ratio | result |")
print("|---|---|---|---|---|")
valid = med("verify/valid_with_scope")
row("valid ≤ 1.3× floor", "verify/valid_with_scope", ns(valid), f"{valid/floor:.2f}× floor", valid <= 1.3*floor)
for r in ["unknown_id", "wrong_secret", "revoked"]:
    v = med(f"verify/{r}")
    row("rejected within ±10% of valid", f"verify/{r}", ns(v), f"{v/valid:.2f}× valid", abs(v/valid-1) <= 0.10)
bc = med("verify/bad_checksum")
row("bad checksum < floor", "verify/bad_checksum", ns(bc), f"{bc/floor:.2f}× floor", bc < floor)
na, al, sb = med("middleware/no_auth"), med("middleware/auth_layer"), med("middleware/static_bearer")
f2 = med("floor #3") or floor
row("auth layer adds ≤ 2× floor", "middleware/auth_layer − no_auth", ns(al-na), f"{(al-na)/f2:.2f}× floor", al-na <= 2*f2)
row("(reference)", "middleware/static_bearer − no_auth", ns(sb-na), f"{(sb-na)/f2:.2f}× floor", True)
one, two = med("threads/one"), med("threads/two")
row("2 threads ≥ 1.8× one", "threads/two vs threads/one", f"{1e9/two/1e6:.2f} M/s vs {1e9/one/1e6:.2f} M/s", f"{one/two:.2f}×", one/two >= 1.8)
m = float(sys.argv[1])
row("≤ 400 bytes per token", "examples/memory (1,000,000 tokens)", f"{m:.0f} B", f"{m/400:.2f}× target", m <= 400)
mem_v, cached, unc = med("postgres/memory_store"), med("postgres/cached"), med("postgres/uncached")
if cached:
    row("cached PostgreSQL ≤ 2× memory", "postgres/cached", ns(cached), f"{cached/mem_v:.2f}× memory", cached <= 2*mem_v)
    row("(reference)", "postgres/uncached", ns(unc), f"{unc/mem_v:.0f}× memory", True)
else:
    print("| cached PostgreSQL ≤ 2× memory | postgres/* | skipped (APITOKEN_TEST_POSTGRES_URL not set) | | |")
print()
# At realistic store sizes (benches/scale.rs): each figure over its own shuffled set, as many
# records as the store's valid tokens, next to a floor over the same tokens.
def scale(size, bench):
    path = os.path.join(root, f"scale_{size}", bench, "new", "estimates.json")
    return json.load(open(path))["median"]["point_estimate"] if os.path.exists(path) else None
print("| target | size | figure | ratio | result |")
print("|---|---|---|---|---|")
for size, label in [("10k", "10,000"), ("1m", "1,000,000")]:
    fl, va = scale(size, "floor"), scale(size, "valid_with_scope")
    if fl is None or va is None:
        print(f"| — | {label} | skipped (no scale figures) | | |")
        continue
    print(f"| valid ≤ 1.3× floor | {label} | {ns(va)} (floor {ns(fl)}) | {va/fl:.2f}× floor | {'met' if va <= 1.3*fl else 'MISSED'} |")
    for r in ["unknown_id", "wrong_secret"]:
        v = scale(size, r)
        print(f"| {r} within ±10% of valid | {label} | {ns(v)} | {v/va:.2f}× valid | {'met' if abs(v/va-1) <= 0.10 else 'MISSED'} |")
    na, al = scale(size, "no_auth"), scale(size, "auth_layer")
    print(f"| auth layer adds ≤ 2× floor | {label} | {ns(al-na)} | {(al-na)/fl:.2f}× floor | {'met' if al-na <= 2*fl else 'MISSED'} |")
print()
# Uncached SQLite (benches/sql.rs), against rusqlite on the same row and PHP's PDO.
php = {m.group(1): float(m.group(2)) for m in re.finditer(r"php/pdo_sqlite/(\w+): min ([\d.]+)", sys.argv[2])}
def sql(name):
    path = os.path.join(root, "sqlite", name, "new", "estimates.json")
    return json.load(open(path))["median"]["point_estimate"] if os.path.exists(path) else None
def us(v): return f"{v/1000:,.2f} µs"
print("| target | table | uncached verification | rusqlite | ratio | result |")
print("|---|---|---|---|---|---|")
for table in ["native", "sanctum"]:
    v, bare = sql(f"{table}_verify_uncached"), sql(f"{table}_rusqlite")
    if v is None or bare is None:
        print(f"| ≤ 2× rusqlite | {table} | skipped (no sql figures) | | | |")
        continue
    print(f"| ≤ 2× rusqlite | {table} | {us(v)} | {us(bare)} | {v/bare:.2f}× | {'met' if v <= 2*bare else 'MISSED'} |")
    if table == "sanctum" and php:
        for way, t in sorted(php.items()):
            print(f"| ≤ PHP PDO ({way.replace('_', ' ')}) | sanctum | {us(v)} | PHP {t:.2f} µs | {v/1000/t:.2f}× PHP | {'met' if v/1000 <= t else 'MISSED'} |")
print()
print("| other | median | ratio to floor |")
print("|---|---|---|")
for n in ["verify/valid_without_last_used", "format/parse/canonical", "format/parse/dct", "format/parse/sanctum",
          "format/generate/canonical", "format/generate/dct", "format/generate/sanctum",
          "format/checksum_reject/canonical", "hash/sha256_43", "middleware/no_auth", "middleware/auth_layer", "middleware/static_bearer"]:
    v = med(n)
    if v is not None:
        print(f"| {n} | {ns(v)} | {v/floor:.2f}× |")
PY
echo
echo "$http"
echo
echo "$wrk_table"
