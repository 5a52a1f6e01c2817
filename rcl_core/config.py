"""One configuration object drives the CLI, the notebooks and the tests.

Every field is a CLI flag of ``rcl train`` (``--batch-size 128`` sets ``batch_size``). A config is
validated once, by :meth:`TrainConfig.validate`, so every entry point reports the same errors.
"""
from __future__ import annotations

import dataclasses
import json
import math
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rcl_core.criteria import _SPEC
from rcl_core.loss import MIN_TEMPERATURE

METHODS = ("moco", "rcl", "proto")
FORMS = ("softmax", "sigmoid")


@dataclass
class TrainConfig:
    """Everything a training run needs; ``rcl train --help`` lists the same fields as flags."""

    # what to train
    method: str = "rcl"
    dataset: str = "digits"
    data_dir: str = "data"
    data_seed: int = 0  # generated datasets (shapes) only; fixed so runs with different seeds share the data
    # Criteria, fine -> coarse. Empty means the method's default: ``moco`` -> instance only;
    # ``rcl`` -> instance + online hierarchical clustering (``proto-K`` levels, K decreasing);
    # ``proto`` -> instance + ``kmeans-16``: instance positives during the cluster warm-up, then SupCon
    # on the one clustering's pseudo labels alone (absolute prototype positives, the baseline RCL improves on).
    # Other choices: ``kmeans-K`` (k-means recomputed each epoch), ``gt`` (every ground-truth level)
    # or ``gt:LEVEL`` (one ground-truth level).
    criteria: list[str] = field(default_factory=list)
    weights: list[float] | None = None
    form: str = "softmax"
    thresholds: list[float] | None = None
    temperature: float = 0.2

    # budget and optimisation
    epochs: int = 30
    batch_size: int = 256
    lr: float = 2e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 2.0
    seed: int = 0

    # model (MoCo v3)
    width: int = 32
    feature_dim: int = 128
    hidden_dim: int = 512
    predictor_dim: int = 512
    momentum: float = 0.99

    # online hierarchical clustering
    cluster_warmup_epochs: float = 3.0
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iterations: int = 3
    prototype_momentum: float = 0.9
    unsure_threshold: float = 0.0

    # runtime
    device: str = "auto"
    amp: bool = True
    run_dir: str = "runs/train"
    log_every: int = 5
    eval_every: int = 5
    checkpoint_every: int = 1
    knn_k: int = 20
    knn_temperature: float = 0.07
    progress: bool = True
    stop_at_step: int = 0  # halt (checkpointed, resumable) once this global step is reached; 0 = never

    def resolved_criteria(self) -> list[str]:
        """The criteria list with the method's default filled in."""
        if self.criteria:
            return list(self.criteria)
        if self.method == "moco":
            return ["instance"]
        if self.method == "proto":
            return ["instance", "kmeans-16"]
        return ["instance", "proto-64", "proto-16"]

    def _check_types(self) -> None:
        """Each field holds the type its annotation says (a JSON config can hold anything)."""
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):
            value, hint = getattr(self, f.name), hints[f.name]
            ok = _is_instance(value, hint)
            if not ok:
                raise ValueError(f"{f.name} must be {_describe(hint)}, got {value!r}")

    def validate(self, criteria_names: list[str] | None = None) -> "TrainConfig":
        """Raise ``ValueError`` naming the field for any impossible value; return self.

        ``criteria_names``: the expanded criteria (``gt`` becomes one name per ground-truth level), when
        known, to check the counts of weights and thresholds against.
        """
        self._check_types()
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            values = value if isinstance(value, list) else [value]
            if any(isinstance(v, float) and not math.isfinite(v) for v in values):
                raise ValueError(f"{f.name} must be finite, got {value!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        crit = self.resolved_criteria()
        if self.method == "moco" and crit != ["instance"]:
            raise ValueError(f"method 'moco' uses the instance criterion only; got criteria={crit}")
        if self.method == "proto" and (len(crit) != 2 or not isinstance(crit[1], str)
                                       or not crit[1].startswith(("kmeans-", "proto-"))):
            raise ValueError("method 'proto' takes the instance criterion and one clustering of one granularity "
                             f"(e.g. ['instance', 'kmeans-16'] or ['instance', 'proto-16']); got criteria={crit}")
        if not crit or crit[0] != "instance":
            raise ValueError(f"criteria must start with 'instance' (finest first), got {crit}")
        if len(set(crit)) != len(crit):
            raise ValueError(f"criteria must not repeat, got {crit}")
        bad = [c for c in crit if not isinstance(c, str) or not _SPEC.match(c)]
        if bad:
            raise ValueError(f"unknown criteria {bad}: use instance, gt, gt:LEVEL, kmeans-K or proto-K (K >= 2)")
        for kind in ("proto", "kmeans"):
            ks = [int(c.split("-")[1]) for c in crit if c.startswith(kind + "-")]
            if any(k < 2 for k in ks) or any(a <= b for a, b in zip(ks, ks[1:])):
                raise ValueError(f"{kind} levels must be >= 2 and strictly decreasing (fine -> coarse), got {ks}")
        # "gt" stands for every ground-truth level: counts are known once the dataset is.
        names = criteria_names if criteria_names is not None else (None if "gt" in crit else crit)
        if self.weights is not None:
            if names is not None and len(self.weights) != len(names):
                raise ValueError(f"weights must have one value per criterion ({len(names)}: {names}), "
                                 f"got {len(self.weights)}")
            if any((not w >= 0) for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"weights must be >= 0 with a positive sum, got {self.weights}")
            check_phase_weights(self.method, self.weights)
        if self.form == "sigmoid":
            if self.thresholds is None or (names is not None and len(self.thresholds) != len(names)):
                raise ValueError(f"thresholds must give one value per criterion ({len(names or crit)}: "
                                 f"{names or crit}) for form='sigmoid', got {self.thresholds}")
        elif self.thresholds is not None:
            raise ValueError("thresholds apply to form='sigmoid' only")
        if not 0 <= self.seed < 2 ** 31 or not 0 <= self.data_seed < 2 ** 31:
            raise ValueError(f"seed and data_seed must be in [0, 2**31), got {self.seed}, {self.data_seed}")
        positive = {"temperature": self.temperature, "epochs": self.epochs, "batch_size": self.batch_size,
                    "lr": self.lr, "width": self.width, "feature_dim": self.feature_dim,
                    "hidden_dim": self.hidden_dim, "predictor_dim": self.predictor_dim,
                    "sinkhorn_epsilon": self.sinkhorn_epsilon, "sinkhorn_iterations": self.sinkhorn_iterations,
                    "log_every": self.log_every, "knn_k": self.knn_k, "knn_temperature": self.knn_temperature}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
        if self.temperature < MIN_TEMPERATURE:
            raise ValueError(f"temperature must be >= {MIN_TEMPERATURE} (smaller values overflow float32 "
                             f"gradients), got {self.temperature!r}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (a contrastive batch needs negatives), got {self.batch_size}")
        for name in ("momentum", "prototype_momentum"):
            value = getattr(self, name)
            if not 0 <= value < 1:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if not 0 <= self.unsure_threshold < 1:
            raise ValueError(f"unsure_threshold must be in [0, 1), got {self.unsure_threshold!r}")
        for name in ("weight_decay", "warmup_epochs", "cluster_warmup_epochs", "eval_every",
                     "checkpoint_every", "stop_at_step"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)!r}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        if not isinstance(data, dict):
            raise ValueError(f"a config must be a JSON object of fields, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"cannot read config {path}: {e}") from e
        return cls.from_dict(data)


def check_phase_weights(method: str, weights) -> None:
    """Weights that leave some phase of training without a loss are refused: the instance criterion (the
    only one during the cluster warm-up, and always on) needs a weight > 0, and so does ``proto``'s
    clustering (the only criterion after the warm-up)."""
    if weights is None:
        return
    if not weights[0] > 0:
        raise ValueError(f"weights: the instance criterion's weight must be > 0 (it is the only criterion during "
                         f"the cluster warm-up), got {list(weights)}")
    if method == "proto" and len(weights) > 1 and not weights[1] > 0:
        raise ValueError(f"weights: method 'proto' trains on its clustering alone after the warm-up, so its weight "
                         f"must be > 0, got {list(weights)}")


def _is_instance(value, hint) -> bool:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", typing.Union)):
        return any(_is_instance(value, h) for h in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(hint)
        return isinstance(value, list) and all(_is_instance(v, item) for v in value)
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    return isinstance(value, hint)


def _describe(hint) -> str:
    return str(hint).replace("typing.", "").replace("<class '", "").replace("'>", "")
