#!/usr/bin/env python3
"""Summarizes bench/run.sh's results.tsv as Markdown tables (medians over the rounds).

Ratios to nginx (or to direct / to one thread) are computed per round, between runs of the
same round, then the median is taken: absolute figures drift with the machine's other load,
ratios within one round much less. "other CPU" is the CPU the machine spent on anything but the
proxy, the upstream and the load generator during a run (100% = one core busy): the noise.

    python3 bench/summarize.py RESULTS_DIR/results.tsv
"""

import statistics
import sys
from collections import defaultdict


def load(path):
    rows = []
    with open(path) as f:
        for line in f:
            row = dict(kv.split("=", 1) for kv in line.split())
            for k, v in row.items():
                try:
                    row[k] = float(v)
                except ValueError:
                    pass
            hz, wall = row["hz"], row["wall_ns"] / 1e9
            if row.get("requests") and row["target"] != "direct":
                row["cpu_us"] = row["proxy_ticks"] / hz * 1e6 / row["requests"]
            ours = row["proxy_ticks"] + row["upstream_ticks"] + row["load_s"] * hz
            row["other_pct"] = max(0.0, (row["busy_ticks"] - ours) / hz / wall * 100)
            rows.append(row)
    return rows


def med(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(v, spec="{:.0f}"):
    return "–" if v is None else spec.format(v)


def ratio(v, ref, spec="{:.2f}"):
    return "" if v is None or not ref else " (" + spec.format(v / ref) + "×)"


def per_round_ratio(rows, kind, target, ref, key):
    """Median over rounds of target/ref for `key`, pairing runs of the same round."""
    by = {(r["target"], r["round"]): r for r in rows if r["kind"] == kind}
    ratios = [
        by[(target, rnd)][key] / by[(ref, rnd)][key]
        for (t, rnd) in by
        if t == target and (ref, rnd) in by and by[(ref, rnd)][key]
    ]
    return (med(ratios), min(ratios), max(ratios)) if ratios else (None, None, None)


def table(header, lines):
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(line) + " |" for line in lines]
    return "\n".join(out)


def group(rows, kind):
    by = defaultdict(list)
    for r in rows:
        if r["kind"] == kind:
            by[r["target"]].append(r)
    return by


def col(runs, key):
    return med(r.get(key) for r in runs)


def saturation(rows, sat, paced, rounds):
    """The saturation and paced table."""
    print(f"## acsgate vs nginx, HAProxy, Caddy: medians of {rounds} interleaved rounds")
    print("(saturation: wrk 1 thread × 64 connections, ACS mix; paced: same at about 2,000 req/s;")
    print(" proxy pinned to one core, wrk + upstream to the other; (×) = ratio to nginx)\n")
    ref_sat, ref_paced = sat.get("nginx", []), paced.get("nginx", [])
    lines = []
    for t, runs in sat.items():
        rps_ratio = per_round_ratio(rows, "sat", t, "nginx", "rps")
        cpu, ref_cpu = col(runs, "cpu_us"), col(ref_sat, "cpu_us")
        p = paced.get(t, [])
        rss, ref_rss = med(r["rss_kb"] or None for r in runs + p), med(r["rss_kb"] for r in ref_sat + ref_paced)
        lines.append([
            t,
            fmt(col(runs, "rps")) + ("" if rps_ratio[0] is None else
                                     f" ({rps_ratio[0]:.2f}×, {rps_ratio[1]:.2f}–{rps_ratio[2]:.2f})"),
            fmt(cpu, "{:.1f}") + ratio(cpu, ref_cpu),
            fmt(col(runs, "p50_us"), "{:.0f}") + " / " + fmt(col(runs, "p99_us"), "{:.0f}"),
            fmt(col(p, "p50_us")) + ratio(col(p, "p50_us"), col(ref_paced, "p50_us")),
            fmt(col(p, "p99_us")) + ratio(col(p, "p99_us"), col(ref_paced, "p99_us")),
            fmt(rss and rss / 1024, "{:.1f}") + ratio(rss, ref_rss),
            fmt(sum(r["non2xx"] + r["sockerr"] for r in runs + p)),
            fmt(col(runs + p, "other_pct")),
        ])
    print(table(["target", "req/s", "proxy CPU µs/req", "sat p50 / p99 µs", "paced p50 µs",
                 "paced p99 µs", "peak RSS MiB", "errors", "other CPU %"], lines))


def main(path):
    rows = load(path)
    sat, paced = group(rows, "sat"), group(rows, "paced")
    rounds = int(max((r["round"] for r in rows if r["kind"] == "sat"), default=0))
    if rounds:
        saturation(rows, sat, paced, rounds)

    scale = group(rows, "scale")
    if scale:
        r2 = per_round_ratio(rows, "scale", "acsgate-2t", "acsgate", "rps")
        print("\n## acsgate: 1 vs 2 worker threads (nothing pinned, wrk 2 threads)\n")
        print(table(["worker threads", "req/s", "proxy CPU µs/req", "p50 / p99 µs", "other CPU %"], [
            [t.replace("acsgate-2t", "2").replace("acsgate", "1"),
             fmt(col(runs, "rps")) + ("" if t == "acsgate" or r2[0] is None else
                                      f" ({r2[0]:.2f}× one thread, {r2[1]:.2f}–{r2[2]:.2f})"),
             fmt(col(runs, "cpu_us"), "{:.1f}"),
             fmt(col(runs, "p50_us")) + " / " + fmt(col(runs, "p99_us")),
             fmt(col(runs, "other_pct"))]
            for t, runs in scale.items()]))

    h2 = group(rows, "h2c")
    if h2:
        ref = h2.get("nginx", [])
        print("\n## h2c: h2load 8 connections × 8 streams, GET mix (proxy pinned; (×) = ratio to nginx)\n")
        lines = []
        for t, runs in h2.items():
            rr = per_round_ratio(rows, "h2c", t, "nginx", "rps")
            lines.append([
                t,
                fmt(col(runs, "rps")) + ("" if rr[0] is None else f" ({rr[0]:.2f}×, {rr[1]:.2f}–{rr[2]:.2f})"),
                fmt(col(runs, "cpu_us"), "{:.1f}") + ratio(col(runs, "cpu_us"), col(ref, "cpu_us")),
                fmt(col(runs, "mean_us")),
                fmt(col(runs, "rss_kb") and col(runs, "rss_kb") / 1024, "{:.1f}"),
                fmt(sum(r["non2xx"] + r["sockerr"] for r in runs)),
                fmt(col(runs, "other_pct")),
            ])
        print(table(["target", "req/s", "proxy CPU µs/req", "mean µs", "peak RSS MiB", "errors",
                     "other CPU %"], lines))

    down, up = group(rows, "stream-down"), group(rows, "stream-up")
    if down:
        rounds = int(max(r["round"] for r in rows if r["kind"] == "stream-down"))
        mib = next(iter(down.values()))[0]["bytes"] / 2**20
        print(f"\n## streaming a {mib:.0f} MiB body, download (GET) and upload (PUT): medians of {rounds} "
              "interleaved rounds (nothing pinned; (×) = ratio to direct)\n")

        def rate(kind, t, runs):
            r = per_round_ratio(rows, kind, t, "direct", "bps")
            v = col(runs, "bps")
            return fmt(v and v / 2**20) + ("" if t == "direct" or r[0] is None else
                                           f" ({r[0]:.2f}×, {r[1]:.2f}–{r[2]:.2f})")

        def cpu_per_gib(runs):  # the proxy's CPU seconds per GiB moved
            return med(r["proxy_ticks"] / r["hz"] / (r["bytes"] / 2**30) for r in runs) if runs else None

        lines = []
        for t, runs in down.items():
            u = up.get(t, [])
            # before the first transfer of a run (a fresh process), and the highest after any
            rss0, rss1 = col(runs, "rss_before_kb"), max((r["rss_kb"] for r in runs + u), default=0)
            lines.append([
                t,
                rate("stream-down", t, runs),
                rate("stream-up", t, u) if u else "–",
                "–" if t == "direct" else fmt(cpu_per_gib(runs), "{:.2f}") + " / " + fmt(cpu_per_gib(u), "{:.2f}"),
                "–" if not rss1 else f"{rss0 / 1024:.1f} → {rss1 / 1024:.1f}",
                fmt(col(runs + u, "other_pct")),
            ])
        print(table(["target", "download MiB/s", "upload MiB/s", "proxy CPU s/GiB down / up",
                     "peak RSS MiB before → max after", "other CPU %"], lines))

    others = [r["other_pct"] for r in rows]
    print(f"\nmachine load (other CPU %, 100 = one core): median {med(others):.0f}, max {max(others):.0f}")


if __name__ == "__main__":
    main(sys.argv[1])
