"""The loss controls of the trainer (changed mid-run) and the live trainer in a background thread."""
import math
import time

import pytest
import torch

from lab.live import LiveTraining
from rcl_core.trainer import Trainer, read_metrics, train
from test_trainer import small_config, tiny_dataset


def records(run_dir):
    return read_metrics(run_dir / "metrics.jsonl")


def steps_of(run_dir):
    return [r for r in records(run_dir) if "event" not in r]


def change_at(step, **changes):
    def listener(event):
        if event.kind == "step" and event.step == step:
            listener.trainer.set_controls(**changes)
    return listener


def trainer_with(tmp_path, listener, **kw):
    t = Trainer(small_config(tmp_path, cluster_warmup_epochs=0, **kw), dataset=tiny_dataset(), listeners=[listener])
    listener.trainer = t
    return t


def test_a_weight_change_applies_from_the_next_step_and_is_logged(tmp_path):
    t = trainer_with(tmp_path, change_at(2, weights=[1.0, 0.0, 2.0]))
    t.fit()
    rows = {r["step"]: r for r in steps_of(tmp_path / "run")}
    events = [r for r in records(tmp_path / "run") if r.get("event") == "change"]
    # logged under the first step trained with it (set after step 2, so step 3)
    assert events == [{"event": "change", "step": 3, "epoch": pytest.approx(2 / 3, abs=1e-3),
                       "weights": [1.0, 0.0, 2.0]}]
    # loss = sum_i w_i * per_i (per-criterion values are unweighted): weights 1 up to step 2, new ones after.
    for step, r in rows.items():
        per = r["loss_per_criterion"]
        w = {"instance": 1.0, "proto-8": 1.0, "proto-4": 1.0} if step <= 2 else {"instance": 1.0, "proto-8": 0.0,
                                                                                   "proto-4": 2.0}
        assert r["loss"] == pytest.approx(sum(w[c] * v for c, v in per.items()), rel=1e-5)


def test_a_disabled_criterion_leaves_the_loss_and_comes_back(tmp_path):
    def listener(event):
        if event.kind == "step" and event.step == 2:
            listener.trainer.set_controls(enabled=["instance", "proto-4"])
        if event.kind == "step" and event.step == 5:
            listener.trainer.set_controls(enabled=["instance", "proto-8", "proto-4"])
    trainer_with(tmp_path, listener).fit()
    got = {r["step"]: sorted(r["loss_per_criterion"]) for r in steps_of(tmp_path / "run")}
    assert got[2] == got[6] == ["instance", "proto-4", "proto-8"]
    assert got[3] == got[4] == got[5] == ["instance", "proto-4"]


def test_a_temperature_change_reaches_the_loss(tmp_path):
    seen = []

    def listener(event):
        if event.kind == "step" and event.step == 1:
            listener.trainer.set_controls(temperature=0.5)
        if event.kind == "step":
            seen.append(listener.trainer.loss_fn.temperature)
    trainer_with(tmp_path, listener).fit()
    assert seen[0] == pytest.approx(0.2) and set(seen[1:]) == {0.5}


@pytest.mark.parametrize("changes,match", [
    (dict(enabled=["proto-8"]), "must include 'instance'"),
    (dict(enabled=["instance", "proto-99"]), "unknown criteria"),
    (dict(weights=[1.0, 2.0]), "one value per criterion"),
    (dict(weights=[1.0, -1.0, 1.0]), "weights must be finite, >= 0"),
    (dict(enabled=["instance"], weights=[0.0, 1.0, 1.0]), "instance criterion's weight must be > 0"),
    (dict(weights=[0.0, 1.0, 1.0]), "instance criterion's weight must be > 0"),
    (dict(thresholds=[0.5, 0.4, 0.3]), "sigmoid.? only"),
    (dict(temperature=0.0), "temperature must be"),
    (dict(temperature=float("nan")), "temperature must be"),
])
def test_invalid_controls_are_refused_and_change_nothing(tmp_path, changes, match):
    t = Trainer(small_config(tmp_path), dataset=tiny_dataset())
    before = t.next_controls()
    with pytest.raises(ValueError, match=match):
        t.set_controls(**changes)
    assert t.next_controls() == before


def test_proto_refuses_weights_that_leave_a_phase_without_loss(tmp_path):
    cfg = small_config(tmp_path, method="proto", criteria=["instance", "kmeans-4"])
    for weights in ([1.0, 0.0], [0.0, 1.0]):
        with pytest.raises(ValueError, match="weight must be > 0"):
            small_config(tmp_path, method="proto", criteria=["instance", "kmeans-4"], weights=weights).validate()
        t = Trainer(cfg, dataset=tiny_dataset())
        with pytest.raises(ValueError, match="weight must be > 0"):
            t.set_controls(weights=weights)
        assert t.next_controls()["weights"] is None


def test_sigmoid_thresholds_must_stay_decreasing(tmp_path):
    t = Trainer(small_config(tmp_path, form="sigmoid", thresholds=[0.6, 0.3, 0.0]), dataset=tiny_dataset())
    with pytest.raises(ValueError, match="strictly decreasing"):
        t.set_controls(thresholds=[0.3, 0.6, 0.0])
    t.set_controls(thresholds=[0.7, 0.2, -0.1])
    assert t.next_controls()["thresholds"] == [0.7, 0.2, -0.1]


def test_controls_are_checkpointed_and_a_resumed_run_continues_the_same_trajectory(tmp_path):
    full = trainer_with(tmp_path / "a", change_at(2, weights=[1.0, 0.5, 2.0], temperature=0.3))
    full.fit()
    want = [(r["step"], r["loss"]) for r in steps_of(tmp_path / "a" / "run")]

    part = trainer_with(tmp_path / "b", change_at(2, weights=[1.0, 0.5, 2.0], temperature=0.3), stop_at_step=4)
    assert part.fit()["status"] == "stopped"
    resumed = Trainer(small_config(tmp_path / "b", cluster_warmup_epochs=0), dataset=tiny_dataset(), resume=True)
    assert resumed.next_controls()["weights"] == [1.0, 0.5, 2.0]
    assert resumed.next_controls()["temperature"] == 0.3
    resumed.fit()
    got = [(r["step"], r["loss"]) for r in steps_of(tmp_path / "b" / "run")]
    assert [s for s, _ in got] == [s for s, _ in want]
    for (_, a), (_, b) in zip(want, got):
        assert a == pytest.approx(b, rel=1e-6)


def test_logged_excess_is_the_kl_part_of_the_loss(tmp_path):
    train(small_config(tmp_path, cluster_warmup_epochs=0), dataset=tiny_dataset())
    for r in steps_of(tmp_path / "run"):
        # W * KL(P_s || P_f) = W * CE(P_s, P_f) - W * H(P_s): positive, below the loss (H(P_s) > 0 for
        # clusters of several samples), finite.
        assert math.isfinite(r["excess"]) and 0 < r["excess"] < r["loss"]


def test_explain_on_an_inspection_batch_matches_the_loss_and_leaves_training_alone(tmp_path):
    ds = tiny_dataset()
    t = Trainer(small_config(tmp_path, cluster_warmup_epochs=0), dataset=ds)
    t.fit()
    gen_before = t.generator.get_state().clone()
    info, names, labels = t.explain(torch.arange(12))
    assert names == ["instance", "proto-8", "proto-4"] and labels.shape == (3, 12)
    assert torch.equal(t.generator.get_state(), gen_before)  # the training RNG is untouched
    assert info.loss.item() > 0 and info.cosine.shape == (12, 12)
    assert torch.allclose(info.relativeness.sum(1), torch.ones(12))  # every anchor agrees with its own key
    typical, tnames, _ = t.explain(torch.arange(12), only=["instance"])
    assert tnames == ["instance"] and torch.equal(typical.relativeness, torch.eye(12))
    assert torch.allclose(typical.feature_similarity, info.feature_similarity)  # same views, same features
    # P_f is the softmax of cosine / tau: recompute it from the cosines
    assert torch.allclose(info.feature_similarity, torch.softmax(info.cosine / 0.2, dim=1), atol=1e-6)


# ----------------------------------------------------------------------------------------- live training

def live_config(tmp_path, **kw):
    return small_config(tmp_path, **{"epochs": 4, "cluster_warmup_epochs": 0, "log_every": 1, **kw})


def test_live_training_starts_changes_stops_resumes_and_loses_no_metrics(tmp_path):
    live = LiveTraining(live_config(tmp_path), dataset=tiny_dataset(), overwrite=True, refresh_seconds=0.0)
    live.widget()
    view = live.view
    live.start()
    assert live.wait_for(3, timeout=60)
    live.set_controls(enabled=["instance", "proto-4"], weights=[1.0, 1.0, 3.0])
    assert live.wait_for(6, timeout=60)
    live.stop(timeout=60)
    assert live.state == "stopped" and live.has_checkpoint() and not live.running
    stopped_at = live.trainer.step
    live.start()  # resumes from the checkpoint, in a new trainer
    summary = live.wait(timeout=120)
    assert live.state == "completed" and summary["status"] == "completed"
    rows = steps_of(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(1, 13))  # every step once, across the stop
    kinds = [(r["event"], r["step"]) for r in records(tmp_path / "run") if "event" in r]
    assert ("stop", stopped_at) in kinds and ("resume", stopped_at) in kinds
    change = [r for r in records(tmp_path / "run") if r.get("event") == "change"]
    assert change and change[0]["enabled"] == ["instance", "proto-4"]
    after = [r for r in rows if r["step"] > change[0]["step"]]
    assert after and all(sorted(r["loss_per_criterion"]) == ["instance", "proto-4"] for r in after)
    for r in after:  # weights 1 and 3 on the two criteria that stayed on
        per = r["loss_per_criterion"]
        assert r["loss"] == pytest.approx(per["instance"] + 3 * per["proto-4"], rel=1e-5)
    # the figures followed: curves from the log, pull shares for both losses, status at the end
    assert {t.meta["series"] for t in view.curves.data if t.meta} >= {"total", "instance", "knn_top1"}
    assert [t.name for t in view.share.data] == ["typical (instance only)", "RCL"]
    assert "completed" in view.status.value and "12/12" in view.status.value


def test_live_pause_holds_the_loop_between_steps(tmp_path):
    live = LiveTraining(live_config(tmp_path, epochs=30), dataset=tiny_dataset(), overwrite=True)
    live.start()
    assert live.wait_for(2, timeout=60)
    live.pause()
    assert live.held.wait(60)  # the thread reached the end of its step and waits there
    held = live.trainer.step
    time.sleep(0.5)
    assert live.trainer.step == held and live.state == "paused" and live.held.is_set()
    live.pause()  # again: go on
    assert live.wait_for(held + 2, timeout=60)
    live.stop(timeout=60)
    assert live.state == "stopped"


def test_an_exception_in_the_thread_is_shown_and_raised_by_wait(tmp_path, monkeypatch):
    live = LiveTraining(live_config(tmp_path), dataset=tiny_dataset(), overwrite=True, refresh_seconds=0.0)
    live.widget()
    view = live.view
    real = live.trainer.train_step

    def failing(indices, epoch, log=False):
        if live.trainer.step == 2:
            raise FloatingPointError("training diverged at step 2 (test)")
        return real(indices, epoch, log)
    monkeypatch.setattr(live.trainer, "train_step", failing)
    live.start()
    with pytest.raises(RuntimeError, match="diverged at step 2"):
        live.wait(timeout=60)
    assert live.state == "failed" and "FloatingPointError" in live.error_text
    assert "diverged at step 2" in view.message.value and "failed" in view.status.value


def test_live_widget_controls_reach_the_trainer(tmp_path):
    live = LiveTraining(live_config(tmp_path), dataset=tiny_dataset(), overwrite=True)
    live.widget()
    view = live.view
    view.controls["weight:proto-8"].value = 0.5
    view.controls["on:proto-4"].value = False
    view.controls["temperature"].value = 0.3
    ctl = live.controls
    assert ctl["weights"] == [1.0, 0.5, 1.0] and ctl["enabled"] == ["instance", "proto-8"]
    assert ctl["temperature"] == pytest.approx(0.3)
    view.controls["weight:instance"].value = 0.0  # no loss during the warm-up: refused, shown, not applied
    assert "instance criterion&#x27;s weight must be &gt; 0" in view.message.value  # HTML-escaped
    assert live.controls["weights"] == [1.0, 0.5, 1.0]
    assert view.controls["weight:instance"].value == 1.0  # the widget went back to what training uses


def test_the_panel_follows_changes_made_in_code_and_never_clips_them(tmp_path):
    live = LiveTraining(live_config(tmp_path, temperature=2.0, weights=[1.0, 5.0, 1.0]), dataset=tiny_dataset(),
                        overwrite=True)
    live.widget()
    c = live.view.controls
    assert c["temperature"].value == pytest.approx(2.0) and c["weight:proto-8"].value == 5.0
    live.set_controls(enabled=["instance"], temperature=0.05)
    assert not c["on:proto-8"].value and c["temperature"].value == pytest.approx(0.05)
    c["weight:proto-4"].value = 2.0  # touching another setting keeps the code's changes
    ctl = live.controls
    assert ctl["enabled"] == ["instance"] and ctl["temperature"] == pytest.approx(0.05)
    assert ctl["weights"] == [1.0, 5.0, 2.0]


def test_stop_then_start_at_once_resumes(tmp_path):
    live = LiveTraining(live_config(tmp_path, epochs=30), dataset=tiny_dataset(), overwrite=True)
    live.start()
    assert live.wait_for(2, timeout=60)
    live.stop(wait=False)  # the Stop button
    live.start()           # pressed right after: waits for the checkpoint, then resumes
    assert live.state == "running" and live.running
    at = live.trainer.step
    assert live.wait_for(at + 2, timeout=60)
    live.stop(timeout=60)
    kinds = [r["event"] for r in records(tmp_path / "run") if "event" in r]
    assert kinds[:2] == ["stop", "resume"]


def test_a_second_live_run_in_the_same_folder_stops_the_first(tmp_path):
    first = LiveTraining(live_config(tmp_path, epochs=30), dataset=tiny_dataset(), overwrite=True)
    first.start()
    assert first.wait_for(2, timeout=60)
    with pytest.warns(UserWarning, match="stopping the live run already training"):
        second = LiveTraining(live_config(tmp_path, epochs=2), dataset=tiny_dataset(), overwrite=True)
    assert not first.running and first.state == "stopped"
    second.start()
    second.wait(timeout=60)
    assert [r["step"] for r in steps_of(tmp_path / "run")] == list(range(1, 7))  # one run's steps only


def test_reopening_a_completed_run_does_not_retrain_or_rewrite_it(tmp_path):
    cfg = live_config(tmp_path, epochs=1)
    done = LiveTraining(cfg, dataset=tiny_dataset(), overwrite=True)
    done.start()
    summary = done.wait(timeout=60)
    stamp = (tmp_path / "run" / "summary.json").stat().st_mtime_ns
    again = LiveTraining(cfg, dataset=tiny_dataset())
    assert again.state == "completed" and again.result == summary
    with pytest.raises(RuntimeError, match="complete"):
        again.start()
    assert (tmp_path / "run" / "summary.json").stat().st_mtime_ns == stamp


def test_start_after_completion_says_what_to_do(tmp_path):
    live = LiveTraining(live_config(tmp_path, epochs=1), dataset=tiny_dataset(), overwrite=True)
    live.start()
    live.wait(timeout=60)
    with pytest.raises(RuntimeError, match="complete"):
        live.start()


def test_a_change_after_the_last_checkpoint_is_dropped_with_the_steps_a_crash_lost(tmp_path):
    class Crash(Exception):
        pass

    def listener(event):
        if event.kind == "step" and event.step == 4:
            listener.trainer.set_controls(weights=[1.0, 0.0, 0.0])
        if event.kind == "step" and event.step == 5:
            raise Crash  # a hard crash: no stop, no checkpoint (the last one is from step 3)
    t = trainer_with(tmp_path, listener)
    with pytest.raises(Crash):
        t.fit()
    assert any(r.get("event") == "change" and r["step"] == 5 for r in records(tmp_path / "run"))
    resumed = Trainer(small_config(tmp_path, cluster_warmup_epochs=0), dataset=tiny_dataset(), resume=True)
    assert resumed.step == 3 and resumed.next_controls()["weights"] is None  # the checkpoint's settings
    resumed.fit()
    rows = records(tmp_path / "run")
    assert not [r for r in rows if r.get("event") == "change"]  # never applied in the surviving history
    for r in [r for r in rows if "event" not in r]:
        assert r["loss"] == pytest.approx(sum(r["loss_per_criterion"].values()), rel=1e-5)


def test_a_completed_run_without_checkpoint_is_not_wiped_by_a_resume(tmp_path):
    train(small_config(tmp_path, checkpoint_every=0), dataset=tiny_dataset())
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="completed run without checkpoint.pt"):
        Trainer(small_config(tmp_path, checkpoint_every=0, temperature=0.9), dataset=tiny_dataset(), resume=True)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    assert '"temperature": 0.2' in (tmp_path / "run" / "config.json").read_text()


@pytest.mark.parametrize("indices,match", [
    (torch.ones(48, dtype=torch.bool), "integer training-set indices"),
    ([0.5, 1.5], "integer training-set indices"),
    ([0], "at least 2"),
    ([0, 48], r"in \[0, 48\)"),
])
def test_explain_refuses_bad_indices(tmp_path, indices, match):
    t = Trainer(small_config(tmp_path), dataset=tiny_dataset())
    with pytest.raises(ValueError, match=match):
        t.explain(indices)
    with pytest.raises(ValueError, match="only must list criteria"):
        t.explain([0, 1], only=["bogus"])
