"""``rcl train``: every :class:`TrainConfig` field is a flag (``batch_size`` -> ``--batch-size``).

Lists take commas (``--criteria instance,proto-64,proto-16``, ``--weights 1,0.5,0.5``). The ``rcl``
entry point (``lab.cli``) adds ``report``, ``demo`` and ``lab``, which need the UI libraries.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import typing
from pathlib import Path

from rcl_core.config import TrainConfig

_HELP = {
    "method": "moco (instance criterion only), rcl, or proto (SupCon on one clustering's pseudo labels after the warm-up)",
    "dataset": "digits, shapes, mnist5k or folder:PATH",
    "data_dir": "where generated datasets are cached",
    "data_seed": "seed of generated datasets (shapes)",
    "criteria": "comma-separated, instance first: proto-K (online clustering), kmeans-K, gt, gt:LEVEL; "
                "empty = the method's default (rcl: instance,proto-64,proto-16; proto: instance,kmeans-16)",
    "weights": "comma-separated weight per criterion; empty = all 1",
    "form": "softmax (sum of per-criterion SupCon losses) or sigmoid (pairwise thresholds)",
    "thresholds": "comma-separated cosine thresholds, strictly decreasing (form=sigmoid)",
    "temperature": "tau of the loss",
    "epochs": "training epochs (the learning-rate schedule spans them)",
    "batch_size": "images per step (capped at the training set's size)",
    "lr": "peak AdamW learning rate",
    "weight_decay": "AdamW weight decay",
    "warmup_epochs": "linear learning-rate warm-up, in epochs, then cosine decay",
    "seed": "seed of initialisation, data order and augmentations",
    "width": "channels of the backbone's first stage",
    "feature_dim": "output size of projector and predictor",
    "hidden_dim": "hidden size of the projector",
    "predictor_dim": "hidden size of the predictor",
    "momentum": "initial momentum of the momentum encoder (rises to 1 on a cosine)",
    "cluster_warmup_epochs": "epochs of instance-only training before clustering criteria join the loss",
    "sinkhorn_epsilon": "entropy of the Sinkhorn-Knopp assignment",
    "sinkhorn_iterations": "Sinkhorn-Knopp iterations",
    "prototype_momentum": "EMA factor of the prototypes",
    "unsure_threshold": "assignment mass below which a sample agrees only with its own views (0 = off)",
    "device": "auto (CUDA, then MPS, then CPU), cpu, cuda, cuda:1, mps",
    "amp": "bf16 autocast on CUDA",
    "run_dir": "where config, metrics, checkpoint and summary go",
    "log_every": "write a metrics line every N steps (and at each epoch's end)",
    "eval_every": "kNN evaluation every N epochs (0 = only at the end)",
    "checkpoint_every": "checkpoint every N epochs (and on stop)",
    "knn_k": "neighbours of the kNN evaluation",
    "knn_temperature": "temperature of the kNN vote weights",
    "progress": "show a progress bar",
    "stop_at_step": "halt with a checkpoint at this global step (resume with --resume; 0 = never)",
}


def _list_of(kind):
    def parse(text: str):
        items = [s.strip() for s in text.split(",") if s.strip()]
        try:
            return [kind(s) for s in items]
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected comma-separated {kind.__name__} values, got {text!r}")
    return parse


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field; defaults are suppressed so the caller knows which flags were given."""
    hints = typing.get_type_hints(TrainConfig)
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        flag = "--" + f.name.replace("_", "-")
        hint = hints[f.name]
        default = getattr(defaults, f.name)
        shown = ",".join(map(str, default)) if isinstance(default, list) else default
        help_ = _HELP.get(f.name, f.name.replace("_", " ")) + ("" if shown in ([], "", None) else f" (default: {shown})")
        if hint is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=argparse.SUPPRESS, help=help_)
        elif f.name == "criteria":
            parser.add_argument(flag, type=_list_of(str), default=argparse.SUPPRESS, help=help_)
        elif f.name in ("weights", "thresholds"):
            parser.add_argument(flag, type=_list_of(float), default=argparse.SUPPRESS, help=help_)
        else:
            parser.add_argument(flag, type=type(default), default=argparse.SUPPRESS, help=help_)


def config_from_args(args: argparse.Namespace, base: TrainConfig | None = None) -> TrainConfig:
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    given = {k: v for k, v in vars(args).items() if k in fields}
    data = (base or TrainConfig()).to_dict()
    data.update(given)
    return TrainConfig.from_dict(data)


def add_train_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train one run (MoCo v3, RCL or the proto baseline) and evaluate it",
                       description="Train MoCo v3, RCL or the proto baseline; writes config.json, metrics.jsonl, checkpoint.pt, "
                                   "summary.json and eval.npz into --run-dir.")
    p.add_argument("--config", type=Path, help="start from this config.json (flags override it)")
    p.add_argument("--resume", action="store_true",
                   help="continue --run-dir from its checkpoint.pt, with its config.json (flags such as --epochs override)")
    p.add_argument("--overwrite", action="store_true", help="start over in a --run-dir that already holds a run")
    add_config_flags(p)
    return p


def run_train(args: argparse.Namespace) -> int:
    base = None
    if args.config is not None:
        base = TrainConfig.load(args.config)
    elif args.resume:
        run_dir = Path(getattr(args, "run_dir", TrainConfig().run_dir))
        if not (run_dir / "checkpoint.pt").exists():
            raise ValueError(f"nothing to resume in {run_dir}: it holds no checkpoint.pt (a run stopped before its "
                             "first checkpoint cannot be continued); drop --resume to start a new run there "
                             "(with --overwrite if it holds an earlier one)")
        if (run_dir / "config.json").exists():
            base = TrainConfig.load(run_dir / "config.json")
            base.stop_at_step = 0  # the stop point that halted it is done with; a new one must be given again
    config = config_from_args(args, base)
    config.validate()
    from rcl_core.trainer import train

    result = train(config, resume=args.resume, overwrite=args.overwrite)
    if result.get("status") == "stopped":
        print(f"stopped at step {result['step']} (epoch {result['epoch']:.2f}); checkpoint: {result['checkpoint']}\n"
              f"resume with: rcl train --resume --run-dir {config.run_dir}", file=sys.stderr)
        return 130 if result.get("reason") == "interrupt" else 0
    print(json.dumps({k: result[k] for k in ("method", "dataset", "knn_top1", "linear_top1", "nmi", "wall_seconds")}))
    return 0


def main(argv=None) -> int:
    """``python -m rcl_core.cli train ...`` works without the lab's dependencies."""
    parser = argparse.ArgumentParser(prog="rcl")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_parser(sub)
    args = parser.parse_args(argv)
    return guarded(run_train, args)


def guarded(fn, args) -> int:
    """Turn a bad config or input into one clear line and exit code 2 instead of a traceback; anything
    unexpected into one line and exit code 1 (``RCL_DEBUG=1`` shows its traceback)."""
    try:
        return fn(args)
    except KeyboardInterrupt:
        print("rcl: interrupted", file=sys.stderr)
        return 130
    except (ValueError, OSError, ImportError, FloatingPointError) as e:
        if os.environ.get("RCL_DEBUG"):
            raise
        print(f"rcl: error: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # noqa: BLE001 - the CLI's last line of defence
        if os.environ.get("RCL_DEBUG"):
            raise
        print(f"rcl: error: {type(e).__name__}: {e} (set RCL_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
