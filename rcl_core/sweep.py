"""Run a set of training configs one after another, each in its own run directory, resumably.

A sweep is a mapping of run names to :class:`TrainConfig`. A run whose directory already holds a
completed ``summary.json`` for the same config is read, not retrained (a summary written by an older
evaluation is re-evaluated from the run's final checkpoint); an interrupted run resumes from its
checkpoint; anything else is trained. So re-running a notebook cell or a benchmark after Ctrl-C
continues where it stopped and never trains a finished run twice.
"""
from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rcl_core.config import TrainConfig
from rcl_core.trainer import EVALUATION_VERSION, RUNTIME_FIELDS, train

__all__ = ["variants", "run_sweep", "completed_summary"]


def variants(base: TrainConfig, root: str | Path, changes: Mapping[str, Mapping[str, Any]]) -> dict[str, TrainConfig]:
    """Configs ``base`` with each entry of ``changes`` applied, run directories ``root/<folder>``.

    ``folder`` is the run's name with every run of characters other than letters, digits and
    ``. _ = -`` replaced by one ``-`` ("rcl τ=0.1" -> "rcl-τ=0.1"). Every config is validated here, so
    a typo in a sweep fails before the first run trains.
    """
    out, folders = {}, {}
    for name, change in changes.items():
        folder = re.sub(r"[^\w.=-]+", "-", str(name)).strip("-.")
        if not folder:
            raise ValueError(f"run name {name!r} has no letters or digits to name its folder")
        if folder in folders:
            raise ValueError(f"runs {folders[folder]!r} and {name!r} would share the folder {folder!r}")
        folders[folder] = name
        if not isinstance(change, Mapping):
            raise ValueError(f"sweep run {name!r}: the change must be a dict of config fields, got {change!r}")
        data = {**base.to_dict(), **dict(change), "run_dir": str(Path(root) / folder)}
        try:
            out[name] = TrainConfig.from_dict(data).validate()
        except ValueError as e:
            raise ValueError(f"sweep run {name!r}: {e}") from None
    return out


def completed_summary(config: TrainConfig) -> dict[str, Any] | None:
    """The run's summary when its directory holds a completed run of this very config, evaluated by the
    current evaluation code (``EVALUATION_VERSION``), else None: :func:`run_sweep` then resumes the run,
    which for a finished run with its final checkpoint means evaluating it again."""
    run = Path(config.run_dir)
    try:
        saved = json.loads((run / "config.json").read_text())
        summary = json.loads((run / "summary.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or not isinstance(summary, dict):
        return None
    same = {k: v for k, v in saved.items() if k not in RUNTIME_FIELDS} == {
        k: v for k, v in config.to_dict().items() if k not in RUNTIME_FIELDS}
    current = summary.get("evaluation_version") == EVALUATION_VERSION
    return summary if same and current and summary.get("status") == "completed" else None


def run_sweep(configs: Mapping[str, TrainConfig], dataset=None,
              on_run: Callable[[str, dict[str, Any], bool], None] | None = None) -> dict[str, dict[str, Any]]:
    """Train (or read back) every config in order; returns ``{name: summary}``.

    ``dataset``: a loaded dataset shared by the runs (they must all name it). ``on_run(name, summary,
    cached)`` is called after each run. A run directory that holds a *different* completed config is
    refused (its results would be silently replaced), as :class:`Trainer` refuses it.
    """
    if dataset is not None:  # checked for every run before the first one trains
        for name, cfg in configs.items():
            if dataset.name != cfg.dataset:
                raise ValueError(f"sweep run {name!r} trains on {cfg.dataset!r} but dataset {dataset.name!r} was passed")
    else:  # every dataset is loaded (or refused) before the first run trains, and loaded once
        from rcl_core.datasets import load_dataset

        loaded = {}
        for name, cfg in configs.items():
            key = (cfg.dataset, cfg.data_dir, cfg.data_seed)
            if key not in loaded:
                try:
                    loaded[key] = load_dataset(cfg.dataset, data_dir=cfg.data_dir, seed=cfg.data_seed)
                except (ValueError, FileNotFoundError, ImportError) as e:
                    raise ValueError(f"sweep run {name!r}: {e}") from e
    out = {}
    for name, cfg in configs.items():
        summary = completed_summary(cfg)
        cached = summary is not None
        if summary is None:
            data = dataset if dataset is not None else loaded[(cfg.dataset, cfg.data_dir, cfg.data_seed)]
            summary = train(cfg, resume=True, dataset=data)
            if summary.get("status") != "completed":  # stopped (Ctrl-C): keep what finished, say so
                raise KeyboardInterrupt(f"sweep stopped during run {name!r} at step {summary.get('step')}; "
                                        "run it again to resume")
        out[name] = summary
        if on_run is not None:
            on_run(name, summary, cached)
    return out
