"""Quality: do relative positives beat single-instance and absolute prototype positives at the same budget?

    .venv/bin/python benchmarks/quality.py                 # the full grid (see benchmarks/README.md for its time)
    .venv/bin/python benchmarks/quality.py --quick         # a small version: <= 10 minutes on 2 CPU cores
    .venv/bin/python benchmarks/quality.py --datasets shapes --methods moco,rcl --seeds 3

Methods, all trained by the same MoCo v3 trainer with the same model, augmentations, optimiser, epochs
and batch on a dataset (only the criteria differ):

- ``moco``        the instance criterion only (MoCo v3);
- ``proto``       SupCon on k-means pseudo labels of one granularity (``kmeans-K``, K = the number of
                  fine classes), after the same cluster warm-up as RCL (instance positives before it):
                  the absolute prototype-positive baseline;
- ``rcl``         instance + the paper's online hierarchical clustering (``proto-K`` levels), weights
                  1 / 0.3 / 0.1 (see ``CLUSTER_WEIGHTS``);
- ``rcl-kmeans``  instance + multi-granularity k-means, the same K and weights as ``rcl``;
- ``rcl-oracle``  instance + every ground-truth level (an upper reference: it sees the labels).

Each (dataset, method, seed) is one run directory under ``--root`` (default ``runs/quality/full`` or
``runs/quality/quick``), trained by :func:`rcl_core.sweep.run_sweep`: finished runs are read back, an
interrupted one resumes, so Ctrl-C and a re-run lose nothing. Metrics per run (``metric_values``):
``knn_top1@fine`` / ``@coarse`` (finest / coarsest ground-truth level; intermediate levels by their
names; one-level datasets have fine = coarse), ``linear_top1`` (finest level), ``nmi@…`` / ``ari@…`` of
the run's learned criteria against each level (the learned criterion whose cluster count is nearest the
level's class count; for runs that learn none -- ``moco``, ``rcl-oracle`` -- k-means with the level's class
count on the backbone features), ``kmeans_nmi@…`` (k-means on the features for every run, one measure for
all), and ``faithfulness`` (:func:`rcl_core.evaluation.hierarchy_faithfulness`).

Prints a table per dataset, the targets on ``shapes``, and last one JSON object
``{dataset: {method: {metric: {"mean", "std", "n", "values"}}}}`` (std: sample standard deviation over
seeds, 0 for one seed), also written to ``--out``.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import rcl_core  # noqa: E402,F401  (first: sets the OpenMP wait policy before torch loads)
from lab.figures import without_repeated_coarse  # noqa: E402
from rcl_core.config import TrainConfig  # noqa: E402
from rcl_core.runs import atomic_write_json  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
METHODS = ("moco", "proto", "rcl", "rcl-kmeans", "rcl-oracle")
DATASETS = ("shapes", "digits", "mnist5k")

# One setting per dataset, shared by every method. ``levels``: the clustering granularities of rcl and
# rcl-kmeans (fine -> coarse); ``proto_k``: proto's one granularity (the number of fine classes).
# ``epochs`` / ``quick_epochs``: the budgets of the full grid and of --quick. The cluster warm-up is a
# quarter of the budget for every method that clusters.
SETTINGS = {
    # The small fast model that learns the generated shapes on 2 cores (see augment.py and the README);
    # tau 0.2 (not 0.3) after the ablation in benchmarks/README.md: better for MoCo v3 and RCL alike.
    "shapes": dict(config=dict(batch_size=128, width=8, hidden_dim=256, predictor_dim=256, feature_dim=64,
                               lr=0.012, warmup_epochs=1, momentum=0.9, temperature=0.2),
                   levels=(64, 16), proto_k=12, epochs=12, quick_epochs=2),
    # The demo's setting (rcl demo), shorter.
    "digits": dict(config=dict(batch_size=256, lr=2e-3, temperature=0.2),
                   levels=(64, 16), proto_k=10, epochs=60, quick_epochs=6),
    # The shapes model: the default one (width 32) takes ~50 s an epoch of 28x28 images on 2 shared cores.
    "mnist5k": dict(config=dict(batch_size=128, width=8, hidden_dim=256, predictor_dim=256, feature_dim=64,
                                lr=0.012, warmup_epochs=1, momentum=0.9, temperature=0.2),
                    levels=(64, 16), proto_k=10, epochs=10, quick_epochs=1),
}
# The weights of rcl and rcl-kmeans (instance, fine clusters, coarse clusters): learned clusters are noisy
# positives at these budgets (40-45 % pure at the shape level on shapes), and equal weights let them
# outweigh the instance; the ablation in benchmarks/README.md measured both. rcl-oracle keeps equal
# weights (its positives are exact).
CLUSTER_WEIGHTS = [1.0, 0.3, 0.1]


def method_config(method: str, setting: dict) -> dict:
    """The config fields that make ``method`` on a dataset with ``setting``."""
    levels = setting["levels"]
    if method == "moco":
        return {"method": "moco", "criteria": ["instance"]}
    if method == "proto":
        return {"method": "proto", "criteria": ["instance", f"kmeans-{setting['proto_k']}"]}
    if method == "rcl":
        return {"method": "rcl", "criteria": ["instance"] + [f"proto-{k}" for k in levels],
                "weights": CLUSTER_WEIGHTS[:len(levels) + 1]}
    if method == "rcl-kmeans":
        return {"method": "rcl", "criteria": ["instance"] + [f"kmeans-{k}" for k in levels],
                "weights": CLUSTER_WEIGHTS[:len(levels) + 1]}
    if method == "rcl-oracle":
        return {"method": "rcl", "criteria": ["instance", "gt"]}
    raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")


def grid(datasets, methods, seeds: int, quick: bool, root: Path, data_dir: str, epochs: int | None = None):
    """``{(dataset, method, seed): TrainConfig}``, every config validated."""
    from rcl_core.sweep import variants

    out = {}
    for dataset in datasets:
        setting = SETTINGS[dataset]
        budget = epochs or (setting["quick_epochs"] if quick else setting["epochs"])
        base = TrainConfig(dataset=dataset, data_dir=data_dir, epochs=budget, cluster_warmup_epochs=budget / 4,
                           eval_every=0, progress=False, **setting["config"])
        # Seed-major: the first results to arrive compare every method once.
        changes = {f"{method}-s{seed}": {**method_config(method, setting), "seed": seed}
                   for seed in range(seeds) for method in methods}
        for name, cfg in variants(base, root / dataset, changes).items():
            method, seed = name.rsplit("-s", 1)
            out[(dataset, method, int(seed))] = cfg
    return out


def _level_tag(i: int, names: list[str]) -> list[str]:
    """Metric suffixes of level i: ``fine`` for the finest, ``coarse`` for the coarsest (both for one level),
    its name in between."""
    tags = []
    if i == 0:
        tags.append("fine")
    if i == len(names) - 1:
        tags.append("coarse")
    return tags or [names[i]]


def metric_values(summary: dict) -> dict[str, float]:
    """The benchmark's metrics of one run's ``summary.json`` (see the module docstring)."""
    names = list(summary["level_names"])
    learned = bool(summary.get("learned_nmi"))
    nmi = summary["learned_nmi"] if learned else summary["nmi"]
    ari = summary["learned_ari"] if learned else summary["ari"]
    out = {}
    for i, level in enumerate(names):
        for tag in _level_tag(i, names):
            out[f"knn_top1@{tag}"] = summary["knn_top1_per_level"][level]
    out["linear_top1"] = summary["linear_top1"]
    for key, values in (("nmi", nmi), ("ari", ari), ("kmeans_nmi", summary["nmi"])):
        for i, level in enumerate(names):
            for tag in _level_tag(i, names):
                out[f"{key}@{tag}"] = values[level]
    out["faithfulness"] = summary["faithfulness"]
    return out


def aggregate(per_run: dict[tuple[str, str, int], dict[str, float]]) -> dict:
    """``{dataset: {method: {metric: {"mean", "std", "n", "values"}}}}`` from per-run metric dicts keyed
    ``(dataset, method, seed)``; datasets and methods keep the order they first appear in, values are by seed."""
    grouped: dict = {}
    for (dataset, method, seed), metrics in sorted(per_run.items(), key=lambda item: item[0][2]):
        for metric, value in metrics.items():
            grouped.setdefault(dataset, {}).setdefault(method, {}).setdefault(metric, []).append(value)
    out: dict = {}
    for dataset, methods in grouped.items():
        for method, metrics in methods.items():
            for metric, values in metrics.items():
                if not all(math.isfinite(v) for v in values):
                    raise ValueError(f"{dataset}/{method}: {metric} is not finite in some run: {values}")
                out.setdefault(dataset, {}).setdefault(method, {})[metric] = {
                    "mean": statistics.fmean(values), "std": statistics.stdev(values) if len(values) > 1 else 0.0,
                    "n": len(values), "values": values}
    return out


def targets(results: dict) -> dict | None:
    """The issue's targets on ``shapes`` (mean over seeds), when the results hold what they compare."""
    shapes = results.get("shapes", {})
    if not {"moco", "rcl"} <= shapes.keys():
        return None
    rcl, moco = shapes["rcl"], shapes["moco"]
    out = {"rcl_minus_moco_knn_fine_points": 100 * (rcl["knn_top1@fine"]["mean"] - moco["knn_top1@fine"]["mean"]),
           "rcl_minus_moco_nmi_coarse": rcl["nmi@coarse"]["mean"] - moco["nmi@coarse"]["mean"]}
    out["knn_fine_vs_moco_met"] = out["rcl_minus_moco_knn_fine_points"] >= 2.0
    out["nmi_coarse_vs_moco_met"] = out["rcl_minus_moco_nmi_coarse"] >= 0.05
    if "proto" in shapes:
        out["rcl_minus_proto_knn_fine_points"] = 100 * (rcl["knn_top1@fine"]["mean"]
                                                        - shapes["proto"]["knn_top1@fine"]["mean"])
        out["knn_fine_vs_proto_met"] = out["rcl_minus_proto_knn_fine_points"] >= 0.0
    return out


def table(results: dict) -> str:
    lines = []
    for dataset, methods in results.items():
        metrics = without_repeated_coarse(methods, list(dict.fromkeys(m for ms in methods.values() for m in ms)))
        lines.append(f"\n{dataset} (mean ± std over {max(v['n'] for ms in methods.values() for v in ms.values())} seeds)")
        lines.append(f"{'metric':<18}" + "".join(f"{m:>17}" for m in methods))
        for metric in metrics:
            cells = [methods[m].get(metric) for m in methods]
            lines.append(f"{metric:<18}" + "".join(
                f"{c['mean']:>10.3f} ±{c['std']:.3f}" if c else f"{'–':>17}" for c in cells))
    return "\n".join(lines)


def markdown(results: dict) -> str:
    """The results as one markdown table per dataset (methods as rows), as benchmarks/README.md shows them."""
    out = []
    for dataset, methods in results.items():
        metrics = without_repeated_coarse(methods, [m for m in dict.fromkeys(m for ms in methods.values() for m in ms)
                                   if not m.startswith("ari@")])
        n = max(v["n"] for ms in methods.values() for v in ms.values())
        out += [f"**{dataset}** (mean ± std over {n} seeds)", "",
                "| method | " + " | ".join(f"`{m}`" for m in metrics) + " |",
                "|---|" + "---|" * len(metrics)]
        for method, ms in methods.items():
            out.append(f"| `{method}` | " + " | ".join(
                f"{ms[m]['mean']:.3f} ± {ms[m]['std']:.3f}" if m in ms else "–" for m in metrics) + " |")
        out.append("")
    return "\n".join(out)


def check_paths(root: Path, out_path: Path) -> None:
    """Refuse, before anything trains, a --root that is not a folder and an --out that cannot be written."""
    if root.exists() and not root.is_dir():
        raise SystemExit(f"quality.py: --root {root} is a file, not a folder of runs")
    if out_path.is_dir():
        raise SystemExit(f"quality.py: --out {out_path} is a folder; give a file name (e.g. {out_path / 'quality.json'})")
    try:
        out_path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_path.parent, prefix=".quality-", delete=True):
            pass
    except OSError as e:
        raise SystemExit(f"quality.py: --out {out_path} cannot be written ({e.strerror or e})")


def _names(text: str, allowed: tuple[str, ...], flag: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in allowed]
    if not names or bad:
        raise SystemExit(f"{flag}: unknown {bad or 'empty list'}; choose from {', '.join(allowed)}")
    return list(dict.fromkeys(names))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", default=",".join(DATASETS), help=f"comma-separated, from {', '.join(DATASETS)}")
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated, from {', '.join(METHODS)}")
    p.add_argument("--seeds", type=int, default=None, help="seeds 0..N-1 (default 3; 2 with --quick)")
    p.add_argument("--quick", action="store_true", help="short budgets, 2 seeds: <= 10 minutes on 2 CPU cores")
    p.add_argument("--epochs", type=int, default=None, help="override every dataset's budget (e.g. for tests)")
    p.add_argument("--root", default=None, help="run directories (default runs/quality/full or runs/quality/quick)")
    p.add_argument("--data-dir", default=str(ROOT / "data"))
    p.add_argument("--out", default=None, help="also write the JSON here (default benchmarks/results/"
                                                "quality.json, or quality-quick.json with --quick)")
    p.add_argument("--figure", default=None, help="the comparison figure (lab.figures.quality_comparison): PNG "
                                                   "path, default beside --out; 'none' for no figure")
    args = p.parse_args(argv)
    datasets = _names(args.datasets, DATASETS, "--datasets")
    methods = _names(args.methods, METHODS, "--methods")
    seeds = args.seeds if args.seeds is not None else (2 if args.quick else 3)
    if seeds < 1:
        raise SystemExit(f"--seeds must be >= 1, got {seeds}")
    if args.epochs is not None and args.epochs < 1:
        raise SystemExit(f"--epochs must be >= 1, got {args.epochs}")
    root = Path(args.root) if args.root else ROOT / "runs" / "quality" / ("quick" if args.quick else "full")
    mode = "quick" if args.quick else "full"
    out_path = Path(args.out) if args.out else ROOT / "benchmarks" / "results" / f"quality{'-quick' if args.quick else ''}.json"
    try:
        configs = grid(datasets, methods, seeds, args.quick, root, args.data_dir, args.epochs)
    except ValueError as e:
        raise SystemExit(f"quality.py: {e}")
    check_paths(root, out_path)

    from rcl_core.sweep import run_sweep

    start = time.perf_counter()
    names = {f"{d}/{m}/s{s}": (d, m, s) for (d, m, s) in configs}
    if args.epochs:
        mode += f", --epochs {args.epochs}"
    print(f"quality.py ({mode}): {len(configs)} runs ({', '.join(datasets)} x {', '.join(methods)} x {seeds} "
          f"seeds) under {root}", flush=True)

    def report(name, summary, cached):
        values = metric_values(summary)
        took = "read back" if cached else f"{summary['wall_seconds']:.0f} s"
        nmi = "learned" if summary.get("learned_nmi") else "k-means"
        print(f"  {name:<26} {took:>10}  kNN fine "
              f"{values['knn_top1@fine']:.3f} coarse {values['knn_top1@coarse']:.3f}  linear "
              f"{values['linear_top1']:.3f}  NMI coarse {values['nmi@coarse']:.3f} ({nmi}), k-means "
              f"{values['kmeans_nmi@coarse']:.3f}  faithfulness {values['faithfulness']:.3f}", flush=True)

    try:
        summaries = run_sweep({name: configs[key] for name, key in names.items()}, on_run=report)
    except KeyboardInterrupt as e:
        print(f"quality.py: {e or 'interrupted'}; finished runs are kept", file=sys.stderr)
        raise SystemExit(130)
    except (ValueError, OSError) as e:
        hint = ""
        if "differs" in str(e) or "without checkpoint" in str(e):
            hint = (f"\n  a folder under {root} holds a run of another setting (e.g. other --epochs): "
                    "use another --root, or delete that run's folder to train it again")
        raise SystemExit(f"quality.py: {e}{hint}")
    results = aggregate({names[n]: metric_values(s) for n, s in summaries.items()})
    print(table(results))
    print("\n" + markdown(results))
    t = targets(results)
    if t is not None:
        print("\ntargets on shapes (mean over seeds): " + json.dumps(t))
    print(f"\n{len(configs)} runs in {time.perf_counter() - start:.0f} s; JSON -> {out_path}")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_path, results)
    if args.figure != "none":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from figure_file import write_figure
        from lab.figures import quality_comparison

        figure = Path(args.figure) if args.figure else out_path.with_suffix(".png")
        print(f"figure -> {write_figure(quality_comparison(results), figure)}")
    print(json.dumps(results))
    return results


if __name__ == "__main__":
    main()
