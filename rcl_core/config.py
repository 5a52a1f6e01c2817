"""One configuration object drives the CLI, the notebooks and the tests.

Every field is a CLI flag of ``rcl train`` (``--batch-size 128`` sets ``batch_size``). A config is
validated once, by :meth:`TrainConfig.validate`, so every entry point reports the same errors.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

METHODS = ("moco", "rcl")
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
    # ``rcl`` -> instance + online hierarchical clustering (``proto-K`` levels, K decreasing).
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
        return ["instance", "proto-64", "proto-16"]

    def validate(self) -> "TrainConfig":
        """Raise ``ValueError`` naming the field for any impossible value; return self."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}, got {self.form!r}")
        crit = self.resolved_criteria()
        if self.method == "moco" and crit != ["instance"]:
            raise ValueError(f"method 'moco' uses the instance criterion only; got criteria={crit}")
        if not crit or crit[0] != "instance":
            raise ValueError(f"criteria must start with 'instance' (finest first), got {crit}")
        if len(set(crit)) != len(crit):
            raise ValueError(f"criteria must not repeat, got {crit}")
        if self.weights is not None:
            if len(self.weights) != len(crit):
                raise ValueError(f"weights must have one value per criterion ({len(crit)}: {crit}), "
                                 f"got {len(self.weights)}")
            if any((not w >= 0) for w in self.weights) or sum(self.weights) <= 0:
                raise ValueError(f"weights must be >= 0 with a positive sum, got {self.weights}")
        if self.form == "sigmoid":
            if self.thresholds is None or len(self.thresholds) != len(crit):
                raise ValueError(f"thresholds must give one value per criterion ({len(crit)}) for "
                                 f"form='sigmoid', got {self.thresholds}")
        positive = {"temperature": self.temperature, "epochs": self.epochs, "batch_size": self.batch_size,
                    "lr": self.lr, "width": self.width, "feature_dim": self.feature_dim,
                    "hidden_dim": self.hidden_dim, "predictor_dim": self.predictor_dim,
                    "sinkhorn_epsilon": self.sinkhorn_epsilon, "sinkhorn_iterations": self.sinkhorn_iterations,
                    "log_every": self.log_every, "knn_k": self.knn_k, "knn_temperature": self.knn_temperature}
        for name, value in positive.items():
            if not value > 0:
                raise ValueError(f"{name} must be > 0, got {value!r}")
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
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown config fields: {unknown}")
        return cls(**data)

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "TrainConfig":
        return cls.from_dict(json.loads(Path(path).read_text()))
