#!/usr/bin/env python3
"""Reads the Google Benchmark JSON that scripts/bench.sh leaves in bench/results/ and prints
the tables of docs/performance.md (table) or the data file scripts/plot.gp draws (plot).

Every figure is a median over repetitions (the *_median aggregate); ns per item is
1e9 / items_per_second, so batch sizes compare directly. Ratios are taken within one binary:
bench_dpdk_compare runs our queues and the peers in one process."""
import json
import pathlib
import re
import sys

def load(path):
    """name -> {'ns': ns per item (median), 'cv': coefficient of variation of the time}"""
    data = json.loads(path.read_text())
    rows = {}
    for b in data.get("benchmarks", []):
        name = b.get("run_name", b["name"])
        agg = b.get("aggregate_name", "")
        r = rows.setdefault(name, {})
        if b.get("error_occurred"):
            r["error"] = b.get("error_message", "error")
            continue
        if agg in ("median", ""):
            ips = b.get("items_per_second")
            if ips:
                r["ns"] = 1e9 / ips
            for k in ("kicks/item", "irqs/item"):
                if k in b:
                    r[k] = b[k]
        elif agg == "cv":
            r["cv"] = b.get("real_time", 0.0)
    return rows

def short(name):
    name = name.replace("virtq_bench::", "").replace("virtq::", "").replace("vb::", "")
    name = name.replace("virtq_bench::", "")
    return re.sub(r"/real_time$", "", name)

# The comparison table: (row label, {column: benchmark name}) in bench_dpdk_compare.
CONTENDERS = [
    ("split", "BM_queue_{kind}<virtq::split_layout, virtq_bench::p_event>"),
    ("packed", "BM_queue_{kind}<virtq::packed_layout, virtq_bench::p_event>"),
    ("rte_ring", "virtq_bench::BM_dpdk_ring_{kind}"),
    ("boost spsc", "virtq_bench::BM_boost_spsc_{kind}"),
]
SCENARIOS = [
    ("1 thread, full cycle, batch 1", "cycle", "/1"),
    ("1 thread, full cycle, batch 32", "cycle", "/32"),
    ("2 threads, streaming, batch 1", "stream", "/1/real_time"),
    ("2 threads, streaming, batch 32", "stream", "/32/real_time"),
    ("2 threads, round trip (1 outstanding)", "round_trip", "/real_time"),
]

def comparison(rows):
    out = []
    for label, kind, suffix in SCENARIOS:
        vals = []
        for col, pattern in CONTENDERS:
            r = rows.get(pattern.format(kind=kind) + suffix, {})
            vals.append(r.get("ns"))
        out.append((label, vals))
    return out

def fmt(v):
    return "-" if v is None else (f"{v:.1f}" if v >= 10 else f"{v:.2f}")

def ratio(a, b):
    return "-" if a is None or b is None else f"{a / b:.2f}"

def table(results):
    cmp_path = results / "bench_dpdk_compare.json"
    if cmp_path.exists():
        rows = load(cmp_path)
        print("### Our queues next to the peers (one process, ns per buffer, medians)\n")
        cols = [c for c, _ in CONTENDERS]
        print("| scenario | " + " | ".join(cols) + " | split / rte_ring | packed / rte_ring |")
        print("|---" * (len(cols) + 3) + "|")
        for label, vals in comparison(rows):
            print(f"| {label} | " + " | ".join(fmt(v) for v in vals) +
                  f" | {ratio(vals[0], vals[2])} | {ratio(vals[1], vals[2])} |")
        print()
    for path in sorted(results.glob("bench_*.json")):
        rows = load(path)
        print(f"### {path.stem} (ns per item, median; cv = run-to-run variation of time)\n")
        print("| benchmark | ns/item | cv | kicks/item | irqs/item |")
        print("|---|---|---|---|---|")
        for name, r in rows.items():
            if "error" in r:
                print(f"| {short(name)} | error: {r['error']} | | | |")
                continue
            cv = f"{100 * r['cv']:.0f}%" if "cv" in r else "-"
            k = f"{r['kicks/item']:.3g}" if "kicks/item" in r else ""
            i = f"{r['irqs/item']:.3g}" if "irqs/item" in r else ""
            print(f"| {short(name)} | {fmt(r.get('ns'))} | {cv} | {k} | {i} |")
        print()

def plot(results):
    """Whitespace-separated data for plot.gp: one line per scenario, one column per contender."""
    path = results / "bench_dpdk_compare.json"
    if not path.exists():
        sys.exit("plot: bench_dpdk_compare.json missing (run scripts/bench.sh with DPDK)")
    print("# scenario " + " ".join('"%s"' % c for c, _ in CONTENDERS))
    for label, vals in comparison(load(path)):
        print('"%s" ' % label.replace("2 threads, ", "2T ").replace("1 thread, ", "1T ") +
              " ".join("NaN" if v is None else f"{v:.3f}" for v in vals))

if __name__ == "__main__":
    if len(sys.argv) != 3 or sys.argv[1] not in ("table", "plot"):
        sys.exit("usage: bench_summary.py table|plot <results dir>")
    {"table": table, "plot": plot}[sys.argv[1]](pathlib.Path(sys.argv[2]))
