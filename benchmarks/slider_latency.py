"""The lab's slider-to-figure latency: one widget change -> every figure of the panel updated in place.

    .venv/bin/python benchmarks/slider_latency.py [--sizes 256 1024] [--rounds 15] [--quick]

What is timed is the Python side of one change of the temperature slider of ``lab.panels.LossExplorer``:
the explanation is recomputed and every ``go.FigureWidget`` (pull/push map, P_f/P_s scatter, pull share,
and for 2-D features the gradient field) is updated in place — the work that stands between a slider
move and the messages to the browser. Two batches per size: a 2-D toy hierarchy (all four figures) and
high-dimensional features (D = 128, no gradient field), each with three criteria.

Reference, measured in the same rounds: the naive panel, which builds every figure anew and wraps each
in a new ``go.FigureWidget`` (what `display(fig)` per change amounts to). Rounds interleave the two, so
a busy machine slows both alike; the ratio is the median of per-round ratios. The browser's own drawing
time is not included (see benchmarks/README.md). The last line is one JSON object.
"""
import argparse
import json
import statistics
import time

import rcl_core  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import plotly.graph_objects as go
import torch

from lab import figures
from lab.panels import LossExplorer
from lab.toy import anchor_gradients, toy_hierarchy

TARGET_MS = 100.0  # the issue: within 100 ms for a 256-sample batch


def feature_batch(n: int, d: int = 128, seed: int = 0) -> dict:
    """n unit features in 8 coarse x 4 fine clusters (high-D: no gradient field)."""
    g = torch.Generator().manual_seed(seed)
    fine = torch.arange(n) % 32
    centres = torch.nn.functional.normalize(torch.randn(32, d, generator=g), dim=1)
    q = torch.nn.functional.normalize(centres[fine] + 0.6 * torch.randn(n, d, generator=g) / d ** 0.5, dim=1)
    k = torch.nn.functional.normalize(q + 0.2 * torch.randn(n, d, generator=g) / d ** 0.5, dim=1)
    return {"queries": q, "keys": k, "labels": torch.stack([torch.arange(n), fine, fine // 4]),
            "names": ["instance", "fine", "coarse"]}


def toy_batch(n: int):
    points = n // 16  # 4 coarse x 4 fine x points
    return toy_hierarchy(4, 4, points)


def naive_update(ex: LossExplorer) -> list:
    """The reference: every figure rebuilt and wrapped in a new FigureWidget."""
    b, chosen = ex.batch, ex.enabled()
    info = ex.explain(chosen)
    order = figures.hierarchy_order(b.labels[1:])
    out = [go.FigureWidget(figures.pull_push_map(info, chosen, order=order, key_order=order)),
           go.FigureWidget(figures.pf_ps_scatter(info, chosen)),
           go.FigureWidget(figures.pull_share({"typical (instance only)": ex.explain(["instance"], weighted=False),
                                               "RCL": info}, chosen))]
    if b.queries.shape[1] == 2:
        grad = anchor_gradients(ex.loss(chosen), b.queries, b.keys, ex._labels(chosen)).numpy()
        out.append(go.FigureWidget(figures.gradient_field(b.queries.numpy(), grad, b.labels[1].numpy(),
                                                          b.class_names)))
    return out


def measure(name: str, batch, rounds: int) -> dict:
    ex = LossExplorer({name: batch})
    slider = ex.controls["temperature"]
    panel, naive = [], []
    values = [0.15, 0.25]
    for i in range(rounds + 1):
        start = time.perf_counter()
        slider.value = values[i % 2] + 0.001 * i  # a new value each round: the panel redraws
        t_panel = time.perf_counter() - start
        if ex.error:
            raise RuntimeError(f"{name}: the panel failed to draw: {ex.error}")
        start = time.perf_counter()
        naive_update(ex)
        t_naive = time.perf_counter() - start
        if i:  # the first round warms caches (and sends the template once)
            panel.append(t_panel)
            naive.append(t_naive)
    ratios = [p / n for p, n in zip(panel, naive)]
    q = statistics.quantiles(panel, n=4)
    return {"batch": name, "n": int((batch.queries if hasattr(batch, "queries") else batch["queries"]).shape[0]),
            "figures": len(ex.figures) if batch_is_2d(batch) else len(ex.figures) - 1,
            "panel_ms_median": 1000 * statistics.median(panel), "panel_ms_p25": 1000 * q[0],
            "panel_ms_p75": 1000 * q[2], "naive_ms_median": 1000 * statistics.median(naive),
            "ratio_vs_naive": statistics.median(ratios)}


def batch_is_2d(batch) -> bool:
    q = batch.queries if hasattr(batch, "queries") else batch["queries"]
    return q.shape[1] == 2


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[256, 1024])
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--quick", action="store_true", help="5 rounds")
    args = p.parse_args()
    rounds = 5 if args.quick else args.rounds
    if rounds < 2 or any(n < 32 or n % 16 for n in args.sizes):
        raise SystemExit("--rounds must be >= 2 and --sizes multiples of 16, >= 32")
    print(json.dumps(run(args.sizes, rounds)))


def run(sizes, rounds: int) -> dict:
    """Measure every size (a toy 2-D batch and a D = 128 batch each), print the table, return the summary."""
    rows = []
    print(f"{'batch':<28}{'n':>6}{'figs':>6}{'panel ms (p25-p75)':>24}{'naive ms':>10}{'ratio':>8}")
    for n in sizes:
        for name, batch in ((f"toy 2-D ({n})", toy_batch(n)), (f"features D=128 ({n})", feature_batch(n))):
            r = measure(name, batch, rounds)
            rows.append(r)
            print(f"{name:<28}{r['n']:>6}{r['figures']:>6}"
                  f"{r['panel_ms_median']:>10.1f} ({r['panel_ms_p25']:.0f}-{r['panel_ms_p75']:.0f})".ljust(64)
                  + f"{r['naive_ms_median']:>10.1f}{r['ratio_vs_naive']:>8.2f}")
    summary = {"rounds": rounds, "target_ms": TARGET_MS, "rows": rows, "torch_threads": torch.get_num_threads()}
    for n in sizes:
        worst = max(r["panel_ms_median"] for r in rows if r["n"] == n)
        summary[f"slider_latency_ms_{n}"] = worst
        summary[f"slider_ratio_vs_naive_{n}"] = max(r["ratio_vs_naive"] for r in rows if r["n"] == n)
    if 256 in sizes:
        summary["target_met_256"] = summary["slider_latency_ms_256"] <= TARGET_MS
    return summary

if __name__ == "__main__":
    main()
