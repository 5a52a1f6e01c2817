"""Live training in a notebook: the trainer runs in a background thread, figures update as it goes.

A cell that loops blocks the notebook's widget events, so :class:`LiveTraining` runs
:meth:`rcl_core.trainer.Trainer.fit` in a thread and talks to it only through the trainer's own
channels: listeners (called in the training thread, between steps), :meth:`Trainer.set_controls` (a
change takes effect at the next step and is logged to ``metrics.jsonl`` as a ``change`` event) and
:meth:`Trainer.request_stop` (the loop checkpoints and returns).

- **Start** trains from scratch the first time and resumes from the run directory's checkpoint
  afterwards (a new trainer each time, so a resume is exactly what ``rcl train --resume`` does).
- **Pause** holds the loop between two steps (nothing written); **Start** or **Pause** again goes on.
- **Stop** finishes the step, writes the checkpoint and ends the thread.
- An exception in the thread is kept in :attr:`LiveTraining.error` (with its traceback), shown in the
  panel's status line, and raised again by :meth:`LiveTraining.wait`.

The curves are read back from ``metrics.jsonl`` (the file the run keeps anyway), so what the notebook
shows is what was logged, change and resume events included.
"""
from __future__ import annotations

import threading
import time
import traceback
import warnings
import weakref
from pathlib import Path
from typing import Any

import torch

from rcl_core.config import TrainConfig
from rcl_core.runs import read_metrics
from rcl_core.trainer import CHECKPOINT, Event, Trainer

__all__ = ["LiveTraining"]

_ACTIVE: "weakref.WeakValueDictionary[Path, LiveTraining]" = weakref.WeakValueDictionary()


class LiveTraining:
    """One training run driven from a notebook; see the module docstring.

    Parameters
    ----------
    config : TrainConfig
        The run (``run_dir`` is where it lives). ``progress`` is turned off (the panel shows progress).
    dataset : HierarchicalDataset, optional
        Loaded once and shared with later resumes (default: loaded from the config).
    overwrite : bool
        Start over in a ``run_dir`` that already holds a run (otherwise the first Start resumes it).
    inspect_size : int
        Training samples whose pull/push decisions are re-explained at each figure refresh.
    refresh_seconds : float
        Figures update at most this often (the training thread draws; faster refreshes cost steps).
    name : str
        The run's name in the figures' legends.
    """

    def __init__(self, config: TrainConfig, dataset=None, overwrite: bool = False, inspect_size: int = 128,
                 refresh_seconds: float = 1.0, name: str | None = None):
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if isinstance(inspect_size, bool) or not isinstance(inspect_size, int) or inspect_size < 2:
            raise ValueError(f"inspect_size must be an integer >= 2, got {inspect_size!r}")
        if not isinstance(refresh_seconds, (int, float)) or not refresh_seconds >= 0:
            raise ValueError(f"refresh_seconds must be a number >= 0, got {refresh_seconds!r}")
        self.config = TrainConfig.from_dict({**config.to_dict(), "progress": False}).validate()
        if dataset is None:
            from rcl_core.datasets import load_dataset

            dataset = load_dataset(self.config.dataset, data_dir=self.config.data_dir, seed=self.config.data_seed)
        self.dataset = dataset
        self.run_dir = Path(self.config.run_dir)
        self.name = name or self.run_dir.name
        self.inspect_size = min(inspect_size, len(dataset.train))
        self.refresh_seconds = float(refresh_seconds)
        # One live run per folder in this process: re-running a notebook cell stops the run it replaces
        # (two trainers writing one metrics.jsonl would interleave their steps).
        key = self.run_dir.resolve()
        earlier = _ACTIVE.get(key)
        if earlier is not None and earlier.running:
            warnings.warn(f"stopping the live run already training in {self.run_dir} (its checkpoint is kept)",
                          stacklevel=2)
            earlier.stop(wait=True)
        from rcl_core.sweep import completed_summary

        done = None if overwrite else completed_summary(self.config)
        # The trainer exists from here on (overwrite clears an earlier run now; otherwise the first Start
        # resumes it), so controls set before Start are validated and kept by the trainer itself.
        self.trainer = Trainer(self.config, dataset=dataset, listeners=[self._on_event], resume=not overwrite,
                               overwrite=overwrite)
        _ACTIVE[key] = self
        self._started = False
        self.result: dict[str, Any] | None = done
        self.error: BaseException | None = None
        self.error_text: str | None = None
        # idle | running | paused | stopping | stopped | completed | failed
        self.state = "idle" if done is None else "completed"
        self._thread: threading.Thread | None = None
        self._resume = threading.Event()
        self._resume.set()
        self.held = threading.Event()  # set while a pause holds the training thread
        self._last_draw = 0.0
        self.view: LiveView | None = None  # the widgets, once widget() made them

    # ------------------------------------------------------------------ control
    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Train in the background: from scratch, or on from the checkpoint, or on from a pause."""
        if self.running and self.state == "stopping":
            self._thread.join()  # Stop was pressed: let it finish its step and checkpoint, then resume
        if self.running:
            self._resume.set()
            self._set_state("running")
            return
        if self.state == "completed":
            raise RuntimeError(f"the run in {self.run_dir} is complete: raise config.epochs in a new "
                               "LiveTraining to train further")
        self.error = self.error_text = None
        if self._started:
            # After a stop (or a failure): a new trainer reads the checkpoint exactly as `rcl train --resume`
            # does; changes made while stopped carry over.
            carried = self.trainer.next_controls()
            self.trainer = Trainer(self.config, dataset=self.dataset, listeners=[self._on_event], resume=True)
            self.trainer.set_controls(**carried)
        self._started = True
        self._resume.set()
        self._set_state("running")
        self._thread = threading.Thread(target=self._run, name=f"rcl-live-{self.name}", daemon=True)
        self._thread.start()

    def pause(self) -> None:
        """Hold training between two steps (nothing is written); ``start`` or ``pause`` again goes on."""
        if not self.running:
            return
        if self._resume.is_set():
            self._resume.clear()
            self._set_state("paused")
        else:
            self._resume.set()
            self._set_state("running")

    def stop(self, wait: bool = True, timeout: float | None = None) -> None:
        """Stop after the current step with a checkpoint; ``start`` resumes from it."""
        if not self.running:
            return
        self._set_state("stopping")
        self.trainer.request_stop("lab")
        self._resume.set()
        if wait:
            self.wait(timeout)

    def wait(self, timeout: float | None = None) -> dict[str, Any] | None:
        """Block until the thread ends (or ``timeout`` s pass); re-raise its exception; return its result."""
        if self._thread is not None:
            self._thread.join(timeout)
        if self.error is not None:
            raise RuntimeError(f"training failed in the background thread:\n{self.error_text}") from self.error
        return self.result

    def set_controls(self, **changes) -> dict[str, Any]:
        """Change criteria (``enabled``), ``weights``, ``thresholds`` or ``temperature``; applied at the
        next step (see :meth:`Trainer.set_controls`); invalid values raise ``ValueError`` and change nothing."""
        result = self.trainer.set_controls(**changes)
        if self.view is not None:
            self.view.show_controls()
        return result

    @property
    def criteria_names(self) -> list[str]:
        return list(self.trainer.criteria.names)

    @property
    def controls(self) -> dict[str, Any]:
        """The loss settings the next step uses."""
        return self.trainer.next_controls()

    def wait_for(self, step: int, timeout: float | None = None) -> bool:
        """Block until the trainer has done ``step`` steps (True), or the thread ended or ``timeout``
        seconds passed (False); re-raises the thread's exception. For scripted notebooks and tests."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        while self.trainer.step < step:
            if not self.running or (deadline is not None and time.perf_counter() > deadline):
                self.wait(0)
                return self.trainer.step >= step
            time.sleep(0.02)
        return True

    def metrics(self) -> list[dict[str, Any]]:
        """The run's ``metrics.jsonl`` records so far (steps and events)."""
        return read_metrics(self.run_dir / "metrics.jsonl")

    def has_checkpoint(self) -> bool:
        return (self.run_dir / CHECKPOINT).exists()

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        try:
            self.result = self.trainer.fit()
            self._set_state("completed" if self.result.get("status") == "completed" else "stopped")
        except BaseException as e:  # shown in the notebook, raised again by wait()
            self.error = e
            self.error_text = "".join(traceback.format_exception(type(e), e, e.__traceback__))
            self._set_state("failed")
        finally:
            self._draw(force=True)

    def _on_event(self, event: Event) -> None:
        """Listener, in the training thread: pause here, redraw now and then."""
        if event.kind == "step" and not self._resume.is_set():
            self.held.set()
            while not self._resume.wait(0.2):
                if self.trainer._stop.is_set():
                    break
            self.held.clear()
        if event.kind in ("step", "epoch", "change", "resume", "stop", "end"):
            self._draw(force=event.kind != "step")

    def inspect(self):
        """Explain the loss on the inspection batch (the first ``inspect_size`` training samples, fixed
        augmentations) at the current step, for RCL and for the instance criterion alone (a typical
        contrastive loss). Call it from the training thread or while no training runs."""
        if self.running and threading.current_thread() is not self._thread:
            raise RuntimeError("inspect() runs the model: call it while training is stopped or paused-and-held, "
                               "or from the training thread (the panel does)")
        idx = torch.arange(self.inspect_size)
        info, names, _ = self.trainer.explain(idx)
        typical, _, _ = self.trainer.explain(idx, only=["instance"]) if names != ["instance"] else (info, None, None)
        return info, names, typical

    def _draw(self, force: bool = False) -> None:
        if self.view is None:
            return
        now = time.perf_counter()
        if not force and now - self._last_draw < self.refresh_seconds:
            return
        self._last_draw = now
        self.view.refresh()

    def _set_state(self, state: str) -> None:
        self.state = state
        if self.view is not None:
            self.view.show_state()

    # ------------------------------------------------------------------ widget
    def widget(self):
        """The panel: Start / Pause / Stop, the loss controls, and live figures (:class:`LiveView`)."""
        if self.view is None:
            self.view = LiveView(self)
        return self.view.widget


class LiveView:
    """The widgets of a :class:`LiveTraining`: buttons, status, loss controls and two live figures
    (loss curves with kNN and excess; share of pairs pulled per relation on the inspection batch)."""

    def __init__(self, live: LiveTraining):
        import ipywidgets as widgets
        import plotly.graph_objects as go

        from lab.panels import fit_slider

        self.live = live
        names = live.criteria_names
        ctl = live.controls
        style = {"description_width": "initial"}
        self.buttons = {
            "start": widgets.Button(description="Start", icon="play", button_style="success"),
            "pause": widgets.Button(description="Pause", icon="pause"),
            "stop": widgets.Button(description="Stop", icon="stop", button_style="danger"),
        }
        for key, button in self.buttons.items():
            button.on_click(lambda _b, key=key: self._press(key))
        self.status = widgets.HTML()
        self.message = widgets.HTML()
        self.controls: dict[str, Any] = {}
        rows = []
        weights = ctl["weights"] or [1.0] * len(names)
        for i, n in enumerate(names):
            on = widgets.Checkbox(value=n in ctl["enabled"], description=n, indent=False, disabled=(i == 0),
                                  layout=widgets.Layout(width="130px"))
            weight = widgets.FloatSlider(value=min(weights[i], 3.0), min=0.0, max=3.0, step=0.05,
                                         description="weight", style=style, continuous_update=False)
            fit_slider(weight, weights[i])
            self.controls[f"on:{n}"], self.controls[f"weight:{n}"] = on, weight
            row = [on, weight]
            if live.config.form == "sigmoid":
                t = widgets.FloatSlider(value=ctl["thresholds"][i], min=-1.0, max=1.0, step=0.01,
                                        description="threshold", style=style, continuous_update=False)
                self.controls[f"threshold:{n}"] = t
                row.append(t)
            rows.append(widgets.HBox(row))
        self.controls["temperature"] = widgets.FloatLogSlider(
            value=0.2, base=10, min=-2, max=0, step=0.02, description="temperature τ",
            readout_format=".3f", style=style, continuous_update=False)
        fit_slider(self.controls["temperature"], ctl["temperature"])
        self._syncing = False
        for w in self.controls.values():
            w.observe(self._on_control, names="value")
        self.curves = go.FigureWidget()
        self.share = go.FigureWidget()
        header = widgets.HBox(list(self.buttons.values()) + [self.status])
        box = widgets.VBox([widgets.HTML("<b>Loss settings</b> (take effect at the next step)"), *rows,
                            self.controls["temperature"]])
        self.widget = widgets.VBox([header, self.message, box, self.curves, self.share])
        self.show_state()
        self.refresh()

    def _press(self, key: str) -> None:
        try:
            {"start": self.live.start, "pause": self.live.pause,
             "stop": lambda: self.live.stop(wait=False)}[key]()
            self.message.value = ""
        except (RuntimeError, ValueError) as e:
            self.message.value = _error_html(str(e))
        self.show_state()

    def _on_control(self, change) -> None:
        if self._syncing:
            return
        from lab.panels import keep_decreasing

        names, c = self.live.criteria_names, self.controls
        owner = change["owner"]
        if f"threshold:{names[0]}" in c and owner in [c[f"threshold:{n}"] for n in names]:
            sliders = [c[f"threshold:{n}"] for n in names]
            self._syncing = True
            try:
                keep_decreasing(sliders, sliders.index(owner))
            finally:
                self._syncing = False
        # Only the setting that moved is sent, so a change made from code to another one stands.
        moved = next(k for k, w in c.items() if w is owner).split(":")[0]
        field = {"on": "enabled", "weight": "weights", "threshold": "thresholds"}.get(moved, moved)
        value = (c["temperature"].value if field == "temperature" else
                 [n for n in names if c[f"on:{n}"].value] if field == "enabled" else
                 [c[f"{moved}:{n}"].value for n in names])
        try:
            self.live.set_controls(**{field: value})
            self.message.value = ""
        except ValueError as e:
            self.message.value = _error_html(f"not applied: {e}")
            self.show_controls()  # the widgets show what training will use, not the refused values

    def show_controls(self) -> None:
        """Set the widgets to the controls the next step uses (after a change from code or a refusal)."""
        from lab.panels import fit_slider

        ctl, names, c = self.live.controls, self.live.criteria_names, self.controls
        weights = ctl["weights"] or [1.0] * len(names)
        self._syncing = True
        try:
            for i, n in enumerate(names):
                c[f"on:{n}"].value = n in ctl["enabled"]
                fit_slider(c[f"weight:{n}"], weights[i])
                if f"threshold:{n}" in c:
                    c[f"threshold:{n}"].value = ctl["thresholds"][i]
            fit_slider(c["temperature"], ctl["temperature"])
        finally:
            self._syncing = False

    def show_state(self) -> None:
        live, tr = self.live, self.live.trainer
        state = live.state
        colour = {"running": "#1a7f37", "paused": "#9a6700", "failed": "#b2182b"}.get(state, "#444")
        self.status.value = (f"<span style='color:{colour}'><b>{state}</b></span> · step {tr.step}/{tr.total_steps}"
                             f" · epoch {tr.step / tr.steps_per_epoch:.2f}")
        self.buttons["pause"].description = "Resume" if state == "paused" else "Pause"
        if live.error_text is not None:
            self.message.value = _error_html("training failed:", live.error_text)

    def refresh(self) -> None:
        """Redraw from the metrics log and the inspection batch (called from the training thread)."""
        from lab import figures
        from lab.panels import sync_figure

        live = self.live
        sync_figure(self.curves, figures.loss_curves({live.name: live.metrics()}, title=f"{live.name}: training"))
        in_thread = not live.running or threading.current_thread() is live._thread
        if in_thread and (live.trainer.step > 0 or live.has_checkpoint()):
            info, names, typical = live.inspect()
            infos = {"RCL": info} if typical is info else {"typical (instance only)": typical, "RCL": info}
            sync_figure(self.share, figures.pull_share(infos, names, title=(
                f"Share of pairs pulled, by relation — {live.inspect_size} training samples, step {live.trainer.step}")))
        self.show_state()


def _error_html(text: str, details: str | None = None) -> str:
    import html

    body = f"<span style='color:#b2182b'><b>{html.escape(text)}</b></span>"
    if details:
        body += f"<pre style='color:#b2182b;white-space:pre-wrap;font-size:11px'>{html.escape(details)}</pre>"
    return body
