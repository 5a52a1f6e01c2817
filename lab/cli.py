"""The ``rcl`` command: ``train`` (from ``rcl_core``), ``report``, ``demo`` and ``lab``.

``rcl demo`` is the main job: MoCo v3 and RCL on the real handwritten ``digits`` with the same budget,
both evaluated, and one self-contained HTML report comparing them.
"""
from __future__ import annotations

import argparse
import os
import json
import shutil
import sys
import time
from pathlib import Path

from rcl_core.cli import add_train_parser, guarded, run_train
from rcl_core.config import TrainConfig

# The demo budget: both methods get exactly this, so the comparison is fair. Sized for <= 5 minutes on
# 2 CPU cores, training included (see benchmarks/README.md for measured times).
DEMO_CONFIG = dict(dataset="digits", epochs=100, batch_size=256, lr=2e-3, temperature=0.2,
                   cluster_warmup_epochs=3.0, eval_every=5, seed=0)
DEMO_RUNS = {"MoCo v3": ("moco", "moco"), "RCL": ("rcl", "rcl")}


def demo_configs(out: Path, **overrides) -> dict[str, TrainConfig]:
    configs = {}
    settings = {**DEMO_CONFIG, **overrides}
    # A short budget (--epochs) keeps the clustering criteria's warm-up inside it, so RCL is still RCL.
    settings["cluster_warmup_epochs"] = min(DEMO_CONFIG["cluster_warmup_epochs"], 0.3 * settings["epochs"])
    for label, (method, folder) in DEMO_RUNS.items():
        configs[label] = TrainConfig(**{**settings, "method": method, "run_dir": str(out / folder)})
    return configs


def run_demo(args: argparse.Namespace) -> int:
    from lab.report import write_report
    from rcl_core.trainer import train

    out = Path(args.out)
    if args.fresh and out.exists():
        shutil.rmtree(out)
    overrides = {k: v for k, v in (("epochs", args.epochs), ("device", args.device), ("seed", args.seed))
                 if v is not None}
    overrides["progress"] = not args.quiet
    t0 = time.perf_counter()
    summaries = {}
    for label, config in demo_configs(out, **overrides).items():
        print(f"== {label}: {config.method} on {config.dataset}, {config.epochs} epochs -> {config.run_dir}",
              file=sys.stderr)
        saved = Path(config.run_dir) / "config.json"
        if saved.exists() and TrainConfig.load(saved).to_dict() | {"progress": config.progress} != config.to_dict():
            raise ValueError(f"{config.run_dir} holds a demo run with other settings (budget, seed or device); "
                             f"run `rcl demo --fresh` to start over")
        # resume=True: a demo interrupted with Ctrl-C continues where it stopped when run again.
        again = " ".join(["rcl", *(a for a in sys.argv[1:] if a != "--fresh")]) if sys.argv[1:2] == ["demo"] else "rcl demo"
        try:
            result = train(config, resume=True)
        except KeyboardInterrupt:
            print(f"interrupted; run `{again}` again to continue", file=sys.stderr)
            return 130
        if result.get("status") == "stopped":
            print(f"stopped at step {result['step']}; run `{again}` again to continue", file=sys.stderr)
            return 130
        summaries[label] = result
    report = write_report({label: c.run_dir for label, c in demo_configs(out, **overrides).items()},
                          out / "report.html", title="RCL Lab demo: MoCo v3 vs RCL on handwritten digits")
    for config in demo_configs(out, **overrides).values():
        write_report({config.method: config.run_dir}, Path(config.run_dir) / "report.html",
                     title=f"RCL Lab: {config.method} on {config.dataset}")
    moco, rcl = summaries["MoCo v3"], summaries["RCL"]
    print(f"\n{'':10s}{'kNN top-1':>11s}{'linear top-1':>14s}{'NMI k-means':>13s}")
    for label, s in summaries.items():
        level = s["level_names"][0]
        print(f"{label:10s}{s['knn_top1']:11.3f}{s['linear_top1']:14.3f}{s['nmi'][level]:13.3f}")
    print(f"\nreport: {report.resolve()}\ntotal time: {time.perf_counter() - t0:.0f} s")
    print(json.dumps({"moco_knn_top1": moco["knn_top1"], "rcl_knn_top1": rcl["knn_top1"],
                      "rcl_at_least_moco": rcl["knn_top1"] >= moco["knn_top1"]}))
    return 0


def run_report(args: argparse.Namespace) -> int:
    from lab.report import write_report

    run_dir = Path(args.run_dir)
    out = Path(args.out) if args.out else run_dir / "report.html"
    if (run_dir / "metrics.jsonl").exists():
        runs = {run_dir.name: run_dir}
    else:
        # A folder of runs (like runs/demo): one report comparing them all.
        runs = {p.name: p for p in sorted(run_dir.iterdir()) if (p / "metrics.jsonl").exists()} if run_dir.is_dir() else {}
        if not runs:
            raise FileNotFoundError(f"{run_dir} holds no metrics.jsonl, nor sub-folders with one")
    path = write_report(runs, out, title=f"RCL Lab: {run_dir.name}")
    print(path)
    return 0


def run_lab(args: argparse.Namespace) -> int:
    import importlib.util

    if importlib.util.find_spec("jupyterlab") is None:
        raise ImportError('JupyterLab is not installed in this environment: pip install -e . (or make test)')
    notebooks = Path(args.notebooks) if args.notebooks else _default_notebooks()
    if not notebooks.is_dir():
        raise FileNotFoundError(f"notebook folder {notebooks} does not exist (pass --notebooks PATH)")
    first = notebooks / "01_relative_contrastive_loss.ipynb"
    # The server's root is the notebook folder (so a notebook's cwd is notebooks/, where its relative
    # paths ../data and ../runs point); notebook 01 opens first.
    command = [sys.executable, "-m", "jupyter", "lab", f"--ServerApp.root_dir={notebooks.resolve()}"]
    if first.is_file():
        command.append(str(first.resolve()))
    if hasattr(os, "geteuid") and os.geteuid() == 0 and not any("allow_root" in a for a in args.jupyter_args):
        command.append("--ServerApp.allow_root=True")  # Jupyter refuses root otherwise (containers, CI)
    print(f"rcl lab: JupyterLab on {notebooks.resolve()} (Ctrl-C twice to stop)", flush=True)
    # JupyterLab replaces this process, so Ctrl-C and SIGTERM reach it directly (no orphaned server).
    os.execv(sys.executable, command + list(args.jupyter_args))
    return 0  # not reached


def _default_notebooks() -> Path:
    """notebooks/ in the current folder, else the one beside this package (an editable install)."""
    here = Path("notebooks")
    if here.is_dir():
        return here
    return Path(__file__).resolve().parents[1] / "notebooks"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rcl", description="Relative Contrastive Loss lab")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub).set_defaults(func=run_train)

    p = sub.add_parser("report", help="write report.html for a run directory (or a folder of runs)")
    p.add_argument("run_dir")
    p.add_argument("--out", help="where to write the HTML (default: RUN_DIR/report.html)")
    p.set_defaults(func=run_report)

    p = sub.add_parser("demo", help="the main job: MoCo v3 vs RCL on digits, same budget, one HTML report")
    p.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    p.add_argument("--epochs", type=int, help=f"override the budget (default: {DEMO_CONFIG['epochs']})")
    p.add_argument("--device", help="auto (default), cpu, cuda, mps")
    p.add_argument("--seed", type=int, help="default: 0")
    p.add_argument("--fresh", action="store_true", help="discard earlier demo runs instead of resuming them")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run_demo)

    p = sub.add_parser("lab", help="open JupyterLab on the notebooks")
    p.add_argument("--notebooks", help="the notebook folder (default: ./notebooks, else the project's)")
    p.add_argument("jupyter_args", nargs=argparse.REMAINDER, help="anything else is passed to jupyter lab "
                   "(e.g. --no-browser --port 8899)")
    p.set_defaults(func=run_lab)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:
        if args.command != "lab":
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.jupyter_args = extra + list(args.jupyter_args)  # e.g. rcl lab --no-browser --port 8899
    return guarded(args.func, args)


if __name__ == "__main__":
    sys.exit(main())
