#!/usr/bin/env python3
"""Reads the Google Benchmark JSON that scripts/bench.sh leaves in bench/results/ and prints
the tables of docs/performance.md (table) or the data file scripts/plot.gp draws (plot).

Every figure is a median over repetitions (the *_median aggregate); ns per item is
1e9 / items_per_second, so batch sizes compare directly. Ratios are taken within one binary:
bench_dpdk_compare runs our queues and the peers in one process."""
import json
import pathlib
import re
import statistics
import sys

def load(path):
    """name -> {'ns': median ns per item, 'best': fastest repetition, 'cv': spread of the
    repetitions (stddev / mean), 'cpu': CPU time / real time of the benchmark thread (for the
    two-thread cases: well under 1 means it was descheduled: a noisy machine)}"""
    try:
        data = json.loads(path.read_text())
    except ValueError:  # a binary whose benchmarks were all filtered out writes nothing
        return {}
    reps = {}
    rows = {}
    for b in data.get("benchmarks", []):
        name = b.get("run_name", b["name"])
        r = rows.setdefault(name, {})
        if b.get("error_occurred"):
            r["error"] = b.get("error_message", "error")
            continue
        if b.get("run_type", "iteration") != "iteration":
            continue
        ips = b.get("items_per_second")
        if not ips:
            continue
        rep = reps.setdefault(name, {"ns": [], "cpu": [], "kicks": [], "irqs": [], "dev": []})
        rep["ns"].append(1e9 / ips)
        if b.get("real_time"):
            rep["cpu"].append(b["cpu_time"] / b["real_time"])
        for k, key in (("kicks/item", "kicks"), ("irqs/item", "irqs"), ("device_cpu", "dev")):
            if k in b:
                rep[key].append(b[k])
    for name, rep in reps.items():
        r = rows[name]
        ns = rep["ns"]
        r["ns"] = statistics.median(ns)
        r["best"] = min(ns)
        r["n"] = len(ns)
        mean = statistics.fmean(ns)
        r["cv"] = statistics.pstdev(ns) / mean if len(ns) > 1 and mean > 0 else None
        if rep["cpu"]:
            r["cpu"] = statistics.median(rep["cpu"])
        if rep["kicks"]:
            r["kicks/item"] = statistics.median(rep["kicks"])
        if rep["irqs"]:
            r["irqs/item"] = statistics.median(rep["irqs"])
        if rep["dev"]:
            r["dev"] = statistics.median(rep["dev"])
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

def comparison(rows, key="ns"):
    out = []
    for label, kind, suffix in SCENARIOS:
        vals = []
        for col, pattern in CONTENDERS:
            r = rows.get(pattern.format(kind=kind) + suffix, {})
            vals.append(r.get(key))
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
        short_path = results / "bench_dpdk_compare.2t.json"
        best_rows = dict(rows)
        note = "fastest of the 5 repetitions"
        if short_path.exists():
            short_rows = load(short_path)
            best_rows.update(short_rows)
            n = max((r.get("n", 0) for r in short_rows.values()), default=0)
            note = (f"single thread: fastest of the 5 repetitions; two threads: fastest of {n} "
                    "short runs")
        print(f"Fastest run of each ({note}): what the queues do when the other tenants of "
              "this machine leave both CPUs to the benchmark.\n")
        print("| scenario | " + " | ".join(cols) + " | split / rte_ring | packed / rte_ring |")
        print("|---" * (len(cols) + 3) + "|")
        for label, vals in comparison(best_rows, "best"):
            print(f"| {label} | " + " | ".join(fmt(v) for v in vals) +
                  f" | {ratio(vals[0], vals[2])} | {ratio(vals[1], vals[2])} |")
        print()
    for path in sorted(results.glob("bench_*.json")):
        if path.name.endswith(".2t.json"):
            continue
        rows = load(path)
        if not rows:
            continue
        short_path = path.with_name(path.stem + ".2t.json")
        if short_path.exists():
            for name, r in load(short_path).items():
                if name in rows and "best" in r:
                    rows[name]["best"] = r["best"]
                    rows[name]["short"] = r.get("n", 0)
        print(f"### {path.stem}\n")
        print("ns/item: median of the repetitions; best: the fastest one (for two-thread cases "
              "the fastest of the short runs, marked *); cv: their spread; "
              "cpu: CPU time / real time of the benchmark thread; dev cpu: the same for the "
              "polling device thread of the two-thread cases (near 1 on an idle machine).\n")
        print("| benchmark | ns/item | best | cv | cpu | dev cpu | kicks/item | irqs/item |")
        print("|---|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            if "error" in r:
                print(f"| {short(name)} | error: {r['error']} | | | | | | |")
                continue
            cv = f"{100 * r['cv']:.0f}%" if r.get("cv") is not None else "-"
            cpu = f"{r['cpu']:.2f}" if "cpu" in r else "-"
            k = f"{r['kicks/item']:.3g}" if "kicks/item" in r else ""
            i = f"{r['irqs/item']:.3g}" if "irqs/item" in r else ""
            dev = f"{r['dev']:.2f}" if "dev" in r else ""
            best = fmt(r.get("best")) + ("*" if r.get("short") else "")
            print(f"| {short(name)} | {fmt(r.get('ns'))} | {best} | {cv} | {cpu} "
                  f"| {dev} | {k} | {i} |")
        print()

def plot(results):
    """Whitespace-separated data for plot.gp: one line per scenario, one column per contender."""
    path = results / "bench_dpdk_compare.json"
    if not path.exists():
        sys.exit("plot: bench_dpdk_compare.json missing (run scripts/bench.sh with DPDK)")
    rows = load(path)
    short_path = results / "bench_dpdk_compare.2t.json"
    if short_path.exists():
        # Two-thread medians on a shared machine measure the other tenants: draw the fastest of
        # the short runs for them (the tables give both).
        for name, r in load(short_path).items():
            if "best" in r:
                rows.setdefault(name, {})["ns"] = r["best"]
    print("# scenario " + " ".join('"%s"' % c for c, _ in CONTENDERS))
    for label, vals in comparison(rows):
        short_label = (label.replace("2 threads, ", "2T ").replace("1 thread, ", "1T ")
                       .replace("full cycle, ", "cycle ").replace("streaming, ", "stream ")
                       .replace("batch ", "b").replace(" (1 outstanding)", ""))
        print('"%s" ' % short_label +
              " ".join("NaN" if v is None else f"{v:.3f}" for v in vals))

# Instruction-count targets of issue 6 (per packet, batch 32): scenario -> target.
INSTRUCTION_TARGETS = [
    ("split cycle", "split-event-32", lambda c: 60),
    ("packed cycle", "packed-event-32", lambda c: 50),
    # "pool + census add <= 20" on top of the bare split cycle.
    ("rx split", "rx-split-32", lambda c: c.get("split-event-32", 0) + 20),
    ("rx packed", "rx-packed-32", lambda c: c.get("packed-event-32", 0) + 20),
]

def plot_instructions(results):
    """Data for the second panel: measured instructions per packet vs the issue's target."""
    path = results / "callgrind.json"
    if not path.exists():
        sys.exit("plot: callgrind.json missing (run scripts/callgrind.sh)")
    counts = {r["scenario"]: r["instructions_per_packet"] for r in json.loads(path.read_text())}
    print("# scenario measured target")
    for label, scenario, target in INSTRUCTION_TARGETS:
        if scenario in counts:
            print(f'"{label}" {counts[scenario]:.1f} {target(counts):.1f}')

# Our receive cycle next to DPDK's virtio-user driver + vhost-user device (count_dpdk_virtio).
PEER_ROWS = [
    ("split", "dpdk-split-rx-32", "virtq-split-rx-32", "virtq-split-burst-rx-32"),
    ("packed", "dpdk-packed-rx-32", "virtq-packed-rx-32", "virtq-packed-burst-rx-32"),
]

def plot_peer(results):
    """Data for docs/img/virtio-peer.png: instructions per packet (every callgrind*.json) and ns
    per packet (peer-virtio-times.txt: lines "<scenario> <ns> ns/packet ...", the median of
    the rounds) of DPDK's pair and ours, one row per layout."""
    counts = {}
    for path in sorted(results.glob("callgrind*.json")):
        for r in json.loads(path.read_text()):
            counts[r["scenario"]] = r["instructions_per_packet"]
    times = {}
    path = results / "peer-virtio-times.txt"
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[2] == "ns/packet":
                times.setdefault(parts[0], []).append(float(parts[1]))
    def median(v):
        v = sorted(v)
        return v[len(v) // 2] if v else float("nan")
    print("# layout dpdk_instr virtq_instr virtq_burst_instr dpdk_ns virtq_ns virtq_burst_ns")
    for label, *names in PEER_ROWS:
        if not all(n in counts for n in names):
            continue
        cells = [f"{counts[n]:.1f}" for n in names] + [f"{median(times.get(n, [])):.2f}" for n in names]
        print(f'"{label}" ' + " ".join(cells))

if __name__ == "__main__":
    modes = {"table": table, "plot": plot, "plot-instructions": plot_instructions,
             "plot-peer": plot_peer}
    if len(sys.argv) != 3 or sys.argv[1] not in modes:
        sys.exit("usage: bench_summary.py table|plot|plot-instructions|plot-peer <results dir>")
    modes[sys.argv[1]](pathlib.Path(sys.argv[2]))
