"""Training: MoCo v3 with the Relative Contrastive Loss, driven by one :class:`TrainConfig`.

Data flows one way: dataset -> two augmented views (on device) -> model -> queries/keys -> criteria
labels (from keys) -> RCL -> backward -> step events. Events go to every listener (the metrics log, the
progress bar, live figures); nothing here knows who listens.

A run directory holds ``config.json``, ``metrics.jsonl`` (appended and flushed per logged step),
``checkpoint.pt`` (written to a temporary file, then renamed), ``summary.json`` and ``eval.npz``.
Resuming continues the same trajectory: the epoch order is a function of (seed, epoch) and every other
random state (augmentations, re-seeding of prototypes) is in the checkpoint.
"""
from __future__ import annotations

import json
import math
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from numbers import Real
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch.profiler import record_function

from rcl_core.augment import augment, preset
from rcl_core.config import TrainConfig, check_phase_weights
from rcl_core.criteria import CriteriaSet
from rcl_core.evaluation import clustering_agreement, evaluate_features, extract_features, knn_top1
from rcl_core.loss import MIN_TEMPERATURE, RelativeContrastiveLoss, validate_thresholds, validate_weights
from rcl_core.models import MoCoV3, momentum_at
from rcl_core.runs import atomic_write, atomic_write_json, atomic_write_text, read_metrics

CHECKPOINT = "checkpoint.pt"
EXPLAIN_ANCHORS = 256  # anchors of the training batch used to log the excess W * KL(P_s || P_f)
#: What ``evaluate`` computes; a summary of another version is re-evaluated from the run's final checkpoint
#: by :func:`rcl_core.sweep.run_sweep` instead of being read back (2: faithfulness, k-means criteria refit).
EVALUATION_VERSION = 2
#: Config fields that do not change what a run computes: a resume or a read-back ignores them.
RUNTIME_FIELDS = ("run_dir", "device", "progress", "data_dir")
#: The named phases of :meth:`Trainer.train_step`, in order (``torch.profiler`` record_function scopes).
STEP_PHASES = ("augment", "encoders", "criteria", "loss", "backward", "optimizer", "momentum", "excess")


@dataclass
class Event:
    """A training event: ``kind`` is ``step``, ``epoch`` (with evaluation results, if any), ``checkpoint``,
    ``resume``, ``stop`` or ``end``; ``data`` holds plain Python values only."""

    kind: str
    step: int
    epoch: float
    data: dict[str, Any] = field(default_factory=dict)


def select_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple's MPS, then the CPU."""
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if has_mps else torch.device("cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}") from e
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {name!r}: CUDA is not available here (torch {torch.__version__} "
                             f"{'has no CUDA support' if torch.version.cuda is None else 'sees no GPU'}); "
                             "use --device auto or cpu")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"device {name!r}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type == "mps" and not has_mps:
        raise ValueError(f"device {name!r}: Apple's MPS is not available here; use --device auto or cpu")
    elif device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"device must be auto, cpu, cuda, cuda:N or mps, got {name!r}")
    return device


class MetricsLog:
    """Listener that appends training records to ``metrics.jsonl``, flushing each one.

    Logged: every ``every``-th step and each epoch's last step (with ``knn_top1`` on evaluated epochs);
    other events (``resume``, ``stop``, later lab changes) are written as ``{"event": kind, ...}`` lines.
    """

    def __init__(self, path: str | Path, every: int):
        self.path, self.every = Path(path), every
        self._pending: dict | None = None

    def _write(self, row: dict) -> None:
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
            f.flush()

    def logs(self, step: int, epoch_end: bool) -> bool:
        """Whether step ``step`` gets a record (the trainer measures the excess only for those)."""
        return epoch_end or step % self.every == 0

    def __call__(self, event: Event) -> None:
        if event.kind == "step":
            row = {"step": event.step, "epoch": round(event.epoch, 4), **event.data}
            if event.data.get("epoch_end"):
                self._pending = row  # written with the epoch's evaluation, if any
            elif self.logs(event.step, False):
                self._write(row)
        elif event.kind == "epoch":
            row = self._pending or {"step": event.step, "epoch": event.epoch}
            self._pending = None
            row.pop("epoch_end", None)
            row.update({k: v for k, v in event.data.items() if k == "knn_top1"})
            self._write(row)
        elif event.kind in ("resume", "stop", "change"):
            self._write({"event": event.kind, "step": event.step, "epoch": round(event.epoch, 4), **event.data})

    def truncate_after(self, step: int) -> None:
        """Drop records past ``step`` (logged after the checkpoint a resume starts from)."""
        rows = [r for r in read_metrics(self.path) if r.get("step", 0) <= step]
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in rows))


class ProgressBar:
    """Listener that drives a tqdm bar from step events."""

    def __init__(self, total: int, initial: int = 0):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=total, initial=initial, unit="step", dynamic_ncols=True)

    def __call__(self, event: Event) -> None:
        if event.kind == "step":
            self.bar.update(1)
            self.bar.set_postfix(epoch=f"{event.epoch:.2f}", loss=f"{event.data['loss']:.3f}", refresh=False)
        elif event.kind == "epoch" and "knn_top1" in event.data:
            self.bar.write(f"epoch {event.epoch:.0f}: kNN top-1 {event.data['knn_top1']:.3f}")
        elif event.kind in ("end", "stop"):
            self.bar.close()


class Trainer:
    """Trains MoCo v3 with RCL on ``config.dataset`` and evaluates it; see the module docstring.

    Args:
        config: the run's :class:`TrainConfig` (validated here).
        dataset: a loaded :class:`rcl_core.datasets.HierarchicalDataset` (loaded from the config if None).
        listeners: callables receiving :class:`Event` objects.
        resume: continue from ``run_dir/checkpoint.pt`` when it exists.
        overwrite: start over in a ``run_dir`` that already holds a run (refused otherwise, so that an
            earlier run is never lost by accident).
    """

    def __init__(self, config: TrainConfig, dataset=None, listeners=(), resume: bool = False,
                 overwrite: bool = False):
        self.config = config.validate()
        if dataset is None:
            from rcl_core.datasets import load_dataset

            dataset = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.data_seed)
        self.dataset = dataset
        self.device = select_device(config.device)
        self.run_dir = Path(config.run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.listeners: list[Callable[[Event], None]] = list(listeners)
        self._stop = threading.Event()
        self._stop_reason = "request"

        n = len(dataset.train)
        if n < 2:
            raise ValueError(f"dataset {dataset.name!r} has {n} training samples; contrastive training needs >= 2")
        self.batch_size = min(config.batch_size, n)
        self.steps_per_epoch = n // self.batch_size
        self.total_steps = self.steps_per_epoch * config.epochs

        torch.manual_seed(config.seed)
        c, h, _ = dataset.image_shape
        self.model = MoCoV3(c, h, config.width, config.feature_dim, config.hidden_dim, config.predictor_dim).to(self.device)
        self.optimizer = torch.optim.AdamW(self.model.online_parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.criteria = CriteriaSet(
            config.resolved_criteria(), dataset.train.levels, dataset.level_names, config.cluster_warmup_epochs,
            config.seed, epsilon=config.sinkhorn_epsilon, iterations=config.sinkhorn_iterations,
            momentum=config.prototype_momentum, unsure_threshold=config.unsure_threshold)
        config.validate(self.criteria.names)
        self.criteria.check_dataset_size(n)
        if self.criteria.learned and config.cluster_warmup_epochs >= config.epochs:
            warnings.warn(f"cluster_warmup_epochs={config.cluster_warmup_epochs} >= epochs={config.epochs}: the "
                          f"clustering criteria {[n for c in self.criteria.learned for n in c.names]} never join "
                          "the loss, so this run trains with the instance criterion only", stacklevel=2)
        self.loss_fn = RelativeContrastiveLoss(config.temperature, config.form, config.weights, config.thresholds)
        # What the lab may change while training runs (applied at the next step, logged as a "change"
        # event, saved in checkpoints): which criteria are on, their weights and thresholds, the temperature.
        self.controls: dict[str, Any] = {"enabled": list(self.criteria.names), "weights": config.weights,
                                         "thresholds": config.thresholds, "temperature": config.temperature}
        self._pending: dict[str, Any] = {}
        self._controls_lock = threading.Lock()
        self.augmentation = preset(dataset.augmentation)
        self.generator = torch.Generator(device=self.device).manual_seed(config.seed)
        self.train_images = dataset.train.images.to(self.device)
        self.step = 0
        self.wall_before = 0.0  # seconds spent by earlier invocations of a resumed run

        self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", config.log_every)
        self.resumed = False
        ckpt = self.run_dir / CHECKPOINT
        if resume and ckpt.exists():
            self._load_checkpoint(ckpt)
            if self.step > self.total_steps:
                raise ValueError(f"cannot resume {ckpt} at step {self.step} with epochs={config.epochs} "
                                 f"({self.total_steps} steps): epochs must not shrink below what was trained")
            self.metrics.truncate_after(self.step)
            self.resumed = True
        elif resume:
            if (self.run_dir / "summary.json").exists() and not overwrite:
                raise ValueError(f"run_dir {self.run_dir} holds a completed run without {CHECKPOINT} "
                                 f"(checkpoint_every=0?): there is nothing to resume from; start it over with "
                                 f"--overwrite, or use another --run-dir")
            # Nothing was checkpointed: whatever a killed run logged cannot be continued.
            self.metrics.truncate_after(0)
        elif not resume:
            earlier = [n for n in ("metrics.jsonl", CHECKPOINT) if (self.run_dir / n).exists()]
            if earlier and not overwrite:
                raise ValueError(f"run_dir {self.run_dir} already holds a run ({', '.join(earlier)}): resume it "
                                 f"(--resume) or start it over (--overwrite)")
            (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
            for stale in ("summary.json", "eval.npz", CHECKPOINT):
                (self.run_dir / stale).unlink(missing_ok=True)
        config.save(self.run_dir / "config.json")
        self.listeners.insert(0, self.metrics)

    # ------------------------------------------------------------------ control
    def add_listener(self, listener: Callable[[Event], None]) -> None:
        self.listeners.append(listener)

    def request_stop(self, reason: str = "request") -> None:
        """Ask the loop to stop after the current step (checkpoint written; ``fit`` resumes later)."""
        self._stop_reason = reason
        self._stop.set()

    def set_controls(self, enabled: list[str] | None = None, weights: list[float] | None = None,
                     thresholds: list[float] | None = None, temperature: float | None = None) -> dict[str, Any]:
        """Change the loss while training runs (from another thread); the change takes effect at the next
        step and is logged to ``metrics.jsonl`` as ``{"event": "change", ...}``.

        ``enabled``: the criteria that join the loss (names from ``criteria.names``; ``instance`` always);
        ``weights`` / ``thresholds``: one value per criterion in ``criteria.names`` (thresholds for the
        sigmoid form only, strictly decreasing); ``temperature``: >= 1e-4. Invalid values raise
        ``ValueError`` here and change nothing. Returns the controls as they will be at the next step.
        """
        names = self.criteria.names
        with self._controls_lock:
            new = {**self.controls, **self._pending}
            if enabled is not None:
                if isinstance(enabled, str) or not all(isinstance(n, str) for n in enabled):
                    raise ValueError(f"enabled must be a list of criterion names from {names}, got {enabled!r}")
                enabled = list(enabled)
                unknown = [n for n in enabled if n not in names]
                if unknown:
                    raise ValueError(f"enabled: unknown criteria {unknown}; this run has {names}")
                if "instance" not in enabled:
                    raise ValueError(f"enabled must include 'instance' (the finest criterion), got {enabled}")
                new["enabled"] = [n for n in names if n in enabled]
            if weights is not None:
                new["weights"] = _per_criterion("weights", weights, names)
                validate_weights(new["weights"])
            if thresholds is not None:
                new["thresholds"] = _per_criterion("thresholds", thresholds, names)
                validate_thresholds(new["thresholds"], self.config.form)
            if temperature is not None:
                if isinstance(temperature, bool) or not isinstance(temperature, Real) or not (
                        MIN_TEMPERATURE <= float(temperature) < float("inf")):
                    raise ValueError(f"temperature must be a finite number >= {MIN_TEMPERATURE}, got {temperature!r}")
                new["temperature"] = float(temperature)
            if new["weights"] is not None:
                # The instance criterion is always on: with its weight > 0 every phase has a loss.
                check_phase_weights(self.config.method, new["weights"])
            self._pending = {k: v for k, v in new.items() if v != self.controls[k]}
            return new

    def next_controls(self) -> dict[str, Any]:
        """The controls the next step will use (pending changes included)."""
        with self._controls_lock:
            return {**self.controls, **self._pending}

    def _apply_controls(self, epoch: float) -> None:
        with self._controls_lock:
            changes, self._pending = self._pending, {}
        if changes:
            self.controls.update(changes)
            # Logged under the first step trained with it: a resume from a checkpoint taken before this
            # step drops the event along with the records after the checkpoint.
            self.emit("change", epoch, step=self.step + 1, **changes)

    def emit(self, kind: str, epoch: float, step: int | None = None, **data) -> None:
        event = Event(kind, self.step if step is None else step, epoch, data)
        for listener in self.listeners:
            listener(event)

    def lr_at(self, step: int) -> float:
        warm = self.config.warmup_epochs * self.steps_per_epoch
        if step < warm:
            return self.config.lr * (step + 1) / warm
        progress = (step - warm) / max(1.0, self.total_steps - warm)
        return self.config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self) -> Path:
        path = self.run_dir / CHECKPOINT
        state = {"step": self.step, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "criteria": self.criteria.state_dict(), "generator": self.generator.get_state(),
                 "config": self.config.to_dict(), "wall_seconds": self.wall_before + self._elapsed(),
                 "controls": self.controls}
        atomic_write(path, lambda fh: torch.save(state, fh))
        return path

    def _load_checkpoint(self, path: Path) -> None:
        try:
            state = torch.load(path, map_location=self.device, weights_only=False)
            saved = dict(state["config"])
        except Exception as e:  # truncated, empty, not a checkpoint at all
            raise ValueError(f"cannot read checkpoint {path} ({type(e).__name__}: {e}); delete it, or start over "
                             f"with --overwrite") from e
        for key in ("epochs", "stop_at_step", "eval_every", "checkpoint_every") + RUNTIME_FIELDS:
            saved.pop(key, None)
        now = {k: v for k, v in self.config.to_dict().items() if k in saved}
        changed = sorted(k for k in saved if saved[k] != now[k])
        if changed:
            raise ValueError(f"cannot resume {path}: the config differs from the checkpoint's in {changed}")
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.criteria.load_state_dict(state["criteria"])
        self.generator.set_state(state["generator"].cpu())  # generator states are CPU byte tensors
        self.step = state["step"]
        self.wall_before = state.get("wall_seconds", 0.0)
        self.controls.update(state.get("controls", {}))

    def _elapsed(self) -> float:
        return time.perf_counter() - self._t0 if hasattr(self, "_t0") else 0.0

    # ------------------------------------------------------------------ training
    def _frozen(self, encode, images: torch.Tensor) -> torch.Tensor:
        """``encode`` over ``images`` in eval mode (BN running statistics), then back to training mode."""
        self.model.eval()
        try:
            return extract_features(encode, images, self.device)
        finally:
            self.model.train()

    def _key_features(self, images: torch.Tensor) -> torch.Tensor:
        """L2-normalised momentum-encoder projections: what criteria label."""
        return F.normalize(self._frozen(lambda x: self.model.encode(x, momentum=True, projected=True), images), dim=1)

    def _backbone_features(self, images: torch.Tensor) -> torch.Tensor:
        return self._frozen(self.model.encode, images)

    def _loss_inputs(self, indices: torch.Tensor, epoch: float, keys: torch.Tensor | None = None,
                     controls: dict[str, Any] | None = None, loss_fn: RelativeContrastiveLoss | None = None):
        """Labels (H, B) of the criteria that are switched on (warm-up over, enabled by ``controls``, default
        the run's), their names, and ``loss_fn`` (default the run's) set to their weights, thresholds and
        the temperature."""
        ctl = self.controls if controls is None else controls
        loss_fn = self.loss_fn if loss_fn is None else loss_fn
        labels, names, positions = self.criteria.labels(indices, epoch, keys)
        keep = [i for i, n in enumerate(names) if n in ctl["enabled"]]
        if self.config.method == "proto" and len(keep) > 1:
            # Absolute prototype positives: once the clustering is on, every sample of the anchor's cluster
            # is an equal positive (its own other view included) -- SupCon on the pseudo labels alone.
            keep = keep[1:]
        labels, names, positions = labels[keep], [names[i] for i in keep], [positions[i] for i in keep]
        loss_fn.temperature = ctl["temperature"]
        loss_fn.weights = None if ctl["weights"] is None else [ctl["weights"][p] for p in positions]
        loss_fn.thresholds = None if ctl["thresholds"] is None else [ctl["thresholds"][p] for p in positions]
        return labels, names

    def train_step(self, indices: torch.Tensor, epoch: float, log: bool = False) -> dict:
        """One optimisation step on ``indices``; ``log``: also measure the excess W * KL(P_s || P_f) on the
        batch's first anchors (softmax form; a no-grad pass over at most 256 anchors).

        Its phases are named for ``torch.profiler`` (``step::augment``, ``step::encoders``,
        ``step::criteria``, ``step::loss``, ``step::backward``, ``step::optimizer``, ``step::momentum``,
        ``step::excess``; see :data:`STEP_PHASES`): ``benchmarks/speed.py`` shows where a step's time goes.
        """
        cfg = self.config
        self._apply_controls(epoch)
        with record_function("step::augment"):
            x = self.train_images[indices]
            x1 = augment(x, self.augmentation, self.generator)
            x2 = augment(x, self.augmentation, self.generator)
        use_amp = cfg.amp and self.device.type == "cuda"
        with record_function("step::encoders"), torch.autocast(device_type=self.device.type, dtype=torch.bfloat16,
                                                               enabled=use_amp):
            q1, q2, k1, k2 = self.model(x1, x2)
        if not bool(torch.isfinite(torch.stack([q1.sum(), k1.sum(), q2.sum(), k2.sum()])).all()):
            raise FloatingPointError(f"training diverged at step {self.step}: the encoders output NaN or Inf "
                                     f"(lower --lr, now {cfg.lr}, or raise --temperature, now {cfg.temperature})")
        with record_function("step::criteria"):
            keys = _batch_keys(k1, k2)
            self.criteria.observe(indices, keys)
            labels, names = self._loss_inputs(indices, epoch)
        with record_function("step::loss"):
            loss_a, parts_a = self.loss_fn.forward_with_parts(q1.float(), k2.float(), labels, labels)
            loss_b, parts_b = self.loss_fn.forward_with_parts(q2.float(), k1.float(), labels, labels)
            loss = loss_a + loss_b  # MoCo v3's symmetric loss
        lr = self.lr_at(self.step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        with record_function("step::backward"):
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
        with record_function("step::optimizer"):
            self.optimizer.step()
        with record_function("step::momentum"):
            self.model.update_momentum(momentum_at(self.step / max(1, self.total_steps), cfg.momentum))
        values = torch.cat([loss.detach()[None], (parts_a + parts_b)]).tolist()
        if not math.isfinite(values[0]):
            raise FloatingPointError(f"training diverged at step {self.step}: the loss became {values[0]} "
                                     f"(lower --lr, now {cfg.lr}, or raise --temperature, now {cfg.temperature})")
        out = {"loss": values[0], "loss_per_criterion": dict(zip(names, values[1:])), "lr": lr}
        if log and cfg.form == "softmax":
            with record_function("step::excess"):
                a = min(EXPLAIN_ANCHORS, q1.shape[0])
                halves = [self.loss_fn.explain(q[:a].float(), k.float(), labels[:, :a], labels).excess
                          for q, k in ((q1, k2), (q2, k1))]
            out["excess"] = float(halves[0] + halves[1])  # of the symmetric loss, like "loss"
        return out

    @torch.no_grad()
    def explain(self, indices, epoch: float | None = None, seed: int = 0, only: list[str] | None = None):
        """The loss's decisions on the samples ``indices`` of the training set, at the current step.

        Two views are augmented with a generator of their own (seeded by ``seed``: the training RNG is
        not touched), encoded in eval mode, and explained with the criteria, weights, thresholds and
        temperature that the next training step would use; ``only`` restricts the criteria further, with
        equal weights (e.g. ``["instance"]``: the typical contrastive loss on the same views). Returns ``(RCLExplanation,
        criteria names, labels (H, B))``; meant for inspection batches (it builds H x B x B tensors).
        Call it between steps (from a listener) or while no training runs.
        """
        indices = self._check_indices(indices)
        ctl = self.next_controls()
        if only is not None:
            unknown = [n for n in only if n not in self.criteria.names] if not isinstance(only, str) else [only]
            if unknown:
                raise ValueError(f"only must list criteria of this run {self.criteria.names}, got {only!r}")
            ctl["enabled"] = [n for n in ctl["enabled"] if n in only]
            ctl["weights"] = None  # equal weights: e.g. the plain InfoNCE of the instance criterion
            if not ctl["enabled"]:
                raise ValueError(f"only={only!r} leaves no enabled criterion (enabled: {self.next_controls()['enabled']})")
        epoch = self.step / self.steps_per_epoch if epoch is None else epoch
        g = torch.Generator(device=self.device).manual_seed(seed)
        x = self.train_images[indices]
        x1, x2 = augment(x, self.augmentation, g), augment(x, self.augmentation, g)
        self.model.eval()
        try:
            q1, _, k1, k2 = self.model(x1, x2)
        finally:
            self.model.train()
        keys = _batch_keys(k1, k2)
        loss_fn = RelativeContrastiveLoss(self.config.temperature, self.config.form, None, self.config.thresholds)
        labels, names = self._loss_inputs(indices, epoch, keys, controls=ctl, loss_fn=loss_fn)
        if not names:
            raise ValueError(f"only={only!r}: none of these criteria is on at epoch {epoch:.2f} (clustering "
                             f"criteria join the loss after cluster_warmup_epochs={self.config.cluster_warmup_epochs})")
        return loss_fn.explain(q1.float(), k2.float(), labels, labels), names, labels

    def _check_indices(self, indices) -> torch.Tensor:
        """Training-set indices as a 1-D long tensor on the device; anything else is refused."""
        t = torch.as_tensor(indices)
        n = len(self.dataset.train)
        if t.dtype == torch.bool or t.is_floating_point() or t.is_complex() or t.dim() != 1 or t.numel() < 2:
            raise ValueError(f"indices must be a 1-D sequence of at least 2 integer training-set indices, got "
                             f"{t.dtype} of shape {tuple(t.shape)}")
        if int(t.min()) < 0 or int(t.max()) >= n:
            raise ValueError(f"indices must be in [0, {n}) (the training set), got {int(t.min())}..{int(t.max())}")
        return t.to(device=self.device, dtype=torch.long)

    def _epoch_order(self, epoch: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(self.config.seed * 100_003 + epoch)
        return torch.randperm(len(self.dataset.train), generator=g)

    def fit(self) -> dict:
        """Train to ``config.epochs`` (or until stopped), evaluate, write the run directory.

        Returns the summary dict, or ``{"status": "stopped", ...}`` when stopped early (Ctrl-C,
        :meth:`request_stop`, ``stop_at_step``): then the checkpoint is written and ``fit`` can resume.
        """
        cfg = self.config
        self._t0 = time.perf_counter()
        self._stop.clear()
        bar = ProgressBar(self.total_steps, self.step) if cfg.progress else None
        if bar is not None:
            self.add_listener(bar)
        if self.resumed and self.step < self.total_steps:
            self.emit("resume", self.step / self.steps_per_epoch)
        previous = None
        if threading.current_thread() is threading.main_thread():
            # First Ctrl-C: finish the step, checkpoint, return; a second one interrupts at once.
            def on_sigint(signum, frame):
                if self._stop.is_set():
                    raise KeyboardInterrupt
                self.request_stop("interrupt")
            previous = signal.signal(signal.SIGINT, on_sigint)
        try:
            result = self._loop()
            if self._stop.is_set() and self._stop_reason == "interrupt" and result.get("status") == "completed":
                # Ctrl-C arrived during the final evaluation: the run is complete and written; still obey it.
                raise KeyboardInterrupt
            return result
        finally:
            if previous is not None:
                signal.signal(signal.SIGINT, previous)
            if bar is not None:
                bar.bar.close()
                self.listeners.remove(bar)

    def _loop(self) -> dict:
        cfg, spe = self.config, self.steps_per_epoch
        while self.step < self.total_steps:
            epoch, pos = divmod(self.step, spe)
            if pos == 0:
                self.criteria.on_epoch_start(epoch, lambda: self._key_features(self.train_images))
            order = self._epoch_order(epoch)
            for i in range(pos, spe):
                idx = order[i * self.batch_size:(i + 1) * self.batch_size].to(self.device)
                data = self.train_step(idx, epoch + i / spe, log=self.metrics.logs(self.step + 1, i == spe - 1))
                self.step += 1
                data["wall_seconds"] = round(self.wall_before + self._elapsed(), 3)
                if i == spe - 1:
                    data["epoch_end"] = True
                self.emit("step", epoch + (i + 1) / spe, **data)
                if i < spe - 1 and self._halting():
                    return self._halt(self._halt_reason())
            done = epoch + 1
            results = {}
            if (cfg.eval_every and done % cfg.eval_every == 0) or done == cfg.epochs:
                results["knn_top1"] = self.knn()
            self.emit("epoch", float(done), **results)
            if cfg.checkpoint_every and (done % cfg.checkpoint_every == 0 or done == cfg.epochs):
                self.save_checkpoint()
                self.emit("checkpoint", float(done))
            # A stop on an epoch's last step first finishes the epoch (its record, evaluation, checkpoint).
            if self._halting() and self.step < self.total_steps:
                return self._halt(self._halt_reason())
        summary = self.evaluate()
        self.emit("end", float(cfg.epochs), **{k: summary[k] for k in ("knn_top1", "linear_top1")})
        return summary

    def _halting(self) -> bool:
        return self._stop.is_set() or bool(self.config.stop_at_step and self.step >= self.config.stop_at_step)

    def _halt_reason(self) -> str:
        return self._stop_reason if self._stop.is_set() else "stop_at_step"

    def _halt(self, reason: str) -> dict:
        path = self.save_checkpoint()
        epoch = self.step / self.steps_per_epoch
        self.emit("stop", epoch, reason=reason, checkpoint=str(path))
        return {"status": "stopped", "reason": reason, "step": self.step, "epoch": epoch, "checkpoint": str(path)}

    # ------------------------------------------------------------------ evaluation
    def _eval_features(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Backbone features of the train and test sets at the current step; the last epoch's kNN and the
        final evaluation run at the same step, so they share one extraction."""
        if getattr(self, "_eval_cache", (None,))[0] != self.step:
            ds = self.dataset
            self._eval_cache = (self.step, self._backbone_features(ds.train.images),
                                self._backbone_features(ds.test.images))
        return self._eval_cache[1], self._eval_cache[2]

    def knn(self) -> float:
        ds = self.dataset
        train, test = self._eval_features()
        return knn_top1(train, ds.train.levels[0], test, ds.test.levels[0], self.config.knn_k, self.config.knn_temperature)

    def evaluate(self) -> dict:
        """Full evaluation on frozen backbone features; writes ``summary.json`` and ``eval.npz``."""
        cfg, ds = self.config, self.dataset
        train, test = self._eval_features()
        results = evaluate_features(train, ds.train.levels, test, ds.test.levels, ds.level_names, cfg.knn_k,
                                    cfg.knn_temperature, cfg.seed)
        # k-means criteria were fitted at the start of the last epoch, on features that training has moved
        # since; refit them on the final key features (what a next epoch would use), so that they are judged
        # on the features they label. Online clustering follows every step and needs nothing.
        self.criteria.on_epoch_start(cfg.epochs, lambda: self._key_features(ds.train.images))
        names, crit_labels = self.criteria.predict(self._key_features(ds.test.images))
        criteria_nmi: dict[str, dict[str, float]] = {}
        criteria_ari: dict[str, dict[str, float]] = {}
        for name, row in zip(names, crit_labels.numpy()):
            criteria_nmi[name], criteria_ari[name] = {}, {}
            for level, truth in zip(ds.level_names, ds.test.levels.numpy()):
                agree = clustering_agreement(row, truth)
                criteria_nmi[name][level], criteria_ari[name][level] = agree["nmi"], agree["ari"]
        # "nmi"/"ari": k-means with the level's class count on the test features — the same measure for
        # every run. "learned_nmi"/"learned_ari": the learned criterion whose cluster count is nearest the
        # level's class count (chosen without looking at test labels), for runs that learn criteria.
        learned_nmi, learned_ari, source = {}, {}, {}
        for row, level in enumerate(ds.level_names):
            classes = len(ds.class_names[row])
            if names:
                best = min(names, key=lambda n: abs(int(n.split("-")[1]) - classes))
                learned_nmi[level], learned_ari[level] = criteria_nmi[best][level], criteria_ari[best][level]
                source[level] = best
        summary = {
            "status": "completed", "evaluation_version": EVALUATION_VERSION, "method": cfg.method, "dataset": ds.name, "epochs": cfg.epochs,
            "steps": self.step, "batch_size": self.batch_size, "criteria": self.criteria.names,
            "knn_top1": results["knn_top1"], "linear_top1": results["linear_top1"],
            "knn_top1_per_level": results["knn_top1_per_level"], "faithfulness": results["faithfulness"],
            "nmi": results["kmeans_nmi"], "ari": results["kmeans_ari"],
            "learned_nmi": learned_nmi, "learned_ari": learned_ari, "learned_nmi_source": source,
            "criteria_nmi": criteria_nmi, "criteria_ari": criteria_ari,
            "wall_seconds": round(self.wall_before + self._elapsed(), 2), "device": str(self.device),
            "level_names": list(ds.level_names),
            "class_names": {lvl: list(names_) for lvl, names_ in zip(ds.level_names, ds.class_names)},
        }
        arrays = dict(test_features=test.numpy().astype(np.float32), test_levels=ds.test.levels.numpy(),
                      level_names=np.array(ds.level_names), criteria_names=np.array(names, dtype=str),
                      criteria_test_labels=crit_labels.numpy().astype(np.int64))
        atomic_write(self.run_dir / "eval.npz", lambda fh: np.savez_compressed(fh, **arrays))
        atomic_write_json(self.run_dir / "summary.json", summary)
        return summary


def _per_criterion(name: str, values, names: list[str]) -> list[float]:
    """``values`` as floats, one per criterion of ``names``; anything else is refused, naming ``name``."""
    if isinstance(values, (str, bytes)) or not hasattr(values, "__len__"):
        raise ValueError(f"{name} must be a list of numbers, one per criterion {names}, got {values!r}")
    if not all(isinstance(v, Real) and not isinstance(v, bool) for v in values):
        raise ValueError(f"{name} must be a list of numbers, one per criterion {names}, got {list(values)!r}")
    if len(values) != len(names):
        raise ValueError(f"{name} must have one value per criterion ({len(names)}: {names}), got {len(values)}")
    return [float(v) for v in values]


def _batch_keys(k1: torch.Tensor, k2: torch.Tensor) -> torch.Tensor:
    """One L2-normalised key per sample from its two views' momentum keys: what criteria label."""
    return F.normalize(F.normalize(k1.float(), dim=1) + F.normalize(k2.float(), dim=1), dim=1)


def train(config: TrainConfig, resume: bool = False, listeners=(), dataset=None, overwrite: bool = False) -> dict:
    """Train and evaluate one run (see :class:`Trainer`)."""
    return Trainer(config, dataset=dataset, listeners=listeners, resume=resume, overwrite=overwrite).fit()
