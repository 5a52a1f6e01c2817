import json

import numpy as np
import pytest
import torch

from rcl_core.config import TrainConfig
from rcl_core.datasets import DatasetSplit, HierarchicalDataset
from rcl_core.trainer import Trainer, read_metrics, train


def tiny_dataset(n_train=48, n_test=24, seed=0):
    """Four 8x8 stroke patterns (fine) in two families (coarse), with noise."""
    g = torch.Generator().manual_seed(seed)
    base = torch.zeros(4, 1, 8, 8)
    base[0, 0, 2:6, 3:5] = 1
    base[1, 0, 3:5, 2:6] = 1
    base[2, 0, 1:7, 1] = 1
    base[3, 0, 1, 1:7] = 1

    def split(n):
        fine = torch.arange(n) % 4
        x = (base[fine] + 0.2 * torch.rand(n, 1, 8, 8, generator=g)).clamp(0, 1)
        return DatasetSplit(x, torch.stack([fine, fine // 2]))

    return HierarchicalDataset("tiny", split(n_train), split(n_test), ["stroke", "family"],
                               [["v", "h", "l", "t"], ["bars", "edges"]], "digits")


def small_config(tmp_path, **kw):
    base = dict(method="rcl", criteria=["instance", "proto-8", "proto-4"], epochs=3, batch_size=16, width=8,
                hidden_dim=32, predictor_dim=32, feature_dim=16, cluster_warmup_epochs=1, log_every=1,
                eval_every=1, progress=False, run_dir=str(tmp_path / "run"), lr=1e-3, warmup_epochs=1)
    base.update(kw)
    return TrainConfig(**base)


def losses(run_dir):
    return [(r["step"], r["loss"], r["loss_per_criterion"]) for r in read_metrics(run_dir / "metrics.jsonl")
            if "loss" in r]


@pytest.mark.parametrize("criteria", [["instance", "proto-8", "proto-4"], ["instance", "kmeans-4", "kmeans-2"]])
def test_resume_gives_the_same_trajectory_as_an_uninterrupted_run(tmp_path, criteria):
    ds = tiny_dataset()
    full = small_config(tmp_path / "a", criteria=criteria)
    summary = train(full, dataset=ds)
    assert summary["status"] == "completed"
    want = losses(tmp_path / "a" / "run")
    assert [s for s, _, _ in want] == list(range(1, 10))

    part = small_config(tmp_path / "b", criteria=criteria, stop_at_step=5)  # mid-epoch (3 steps/epoch)
    stopped = train(part, dataset=ds)
    assert stopped["status"] == "stopped" and stopped["step"] == 5
    resumed = train(small_config(tmp_path / "b", criteria=criteria), dataset=ds, resume=True)
    got = losses(tmp_path / "b" / "run")
    assert [s for s, _, _ in got] == [s for s, _, _ in want]
    for (_, a, pa), (_, b, pb) in zip(want, got):
        assert a == pytest.approx(b, rel=1e-6, abs=1e-7)
        assert pa.keys() == pb.keys()
    assert resumed["knn_top1"] == pytest.approx(summary["knn_top1"])
    events = [r for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl") if "event" in r]
    assert [e["event"] for e in events] == ["stop", "resume"]


def test_resume_drops_records_logged_after_the_checkpoint(tmp_path):
    ds = tiny_dataset()
    train(small_config(tmp_path, stop_at_step=4), dataset=ds)
    path = tmp_path / "run" / "metrics.jsonl"
    # A run killed hard after the checkpoint: records past step 4 and a torn last line.
    with open(path, "a") as f:
        f.write(json.dumps({"step": 5, "epoch": 1.6, "loss": 9.9, "loss_per_criterion": {}, "lr": 0}) + "\n")
        f.write('{"step": 6, "epo')
    train(small_config(tmp_path), dataset=ds, resume=True)
    steps = [r["step"] for r in read_metrics(path) if "loss" in r]
    assert steps == list(range(1, 10))
    assert all(r["loss"] != 9.9 for r in read_metrics(path) if "loss" in r)


def test_criteria_switch_on_after_warmup_and_metrics_fields(tmp_path):
    train(small_config(tmp_path), dataset=tiny_dataset())
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    for r in rows:
        assert {"step", "epoch", "loss", "loss_per_criterion", "lr"} <= r.keys()
        # warm-up: instance only in epoch 1 (steps 1-3), all three criteria afterwards
        want = ["instance"] if r["step"] <= 3 else ["instance", "proto-8", "proto-4"]
        assert list(r["loss_per_criterion"]) == want
        # The total is the symmetric sum of the per-criterion parts (weights 1).
        assert r["loss"] == pytest.approx(sum(r["loss_per_criterion"].values()), rel=1e-5)
    assert sum("knn_top1" in r for r in rows) == 3  # one evaluation per epoch
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    for key in ("method", "dataset", "epochs", "knn_top1", "linear_top1", "nmi", "wall_seconds"):
        assert key in summary
    assert set(summary["nmi"]) == {"stroke", "family"}
    assert set(summary["criteria_nmi"]) == {"proto-8", "proto-4"}
    npz = np.load(tmp_path / "run" / "eval.npz")
    assert npz["criteria_test_labels"].shape == (2, 24)
    assert npz["test_features"].shape[0] == 24


def test_lr_schedule_warms_up_then_decays(tmp_path):
    tr = Trainer(small_config(tmp_path, epochs=10, warmup_epochs=2, lr=1.0), dataset=tiny_dataset())
    lrs = [tr.lr_at(s) for s in range(tr.total_steps)]
    warm = 2 * tr.steps_per_epoch
    assert lrs[warm - 1] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:warm - 1], lrs[1:warm]))
    assert all(a >= b for a, b in zip(lrs[warm:], lrs[warm + 1:]))
    assert lrs[-1] < 0.02


def test_momentum_encoder_follows_online_encoder_by_ema(tmp_path):
    tr = Trainer(small_config(tmp_path, momentum=0.9), dataset=tiny_dataset())
    online = [p.detach().clone() for p in tr.model.backbone.parameters()]
    target = [p.detach().clone() for p in tr.model.momentum_backbone.parameters()]
    for p in tr.model.backbone.parameters():
        p.data.add_(1.0)
    tr.model.update_momentum(0.9)
    for o, t, now in zip(online, target, tr.model.momentum_backbone.parameters()):
        torch.testing.assert_close(now, 0.9 * t + 0.1 * (o + 1.0))


def test_request_stop_from_another_thread_checkpoints(tmp_path):
    import threading

    tr = Trainer(small_config(tmp_path, epochs=50), dataset=tiny_dataset())
    seen = []

    def listener(event):
        seen.append(event.kind)
        if event.kind == "step" and event.step == 2:
            tr.request_stop()

    tr.add_listener(listener)
    out = {}
    t = threading.Thread(target=lambda: out.update(tr.fit()))
    t.start()
    t.join(60)
    assert out["status"] == "stopped" and out["step"] == 2 and out["reason"] == "request"
    assert (tmp_path / "run" / "checkpoint.pt").exists()
    assert "stop" in seen


def test_resume_with_a_different_config_is_refused(tmp_path):
    ds = tiny_dataset()
    train(small_config(tmp_path, stop_at_step=2), dataset=ds)
    with pytest.raises(ValueError, match="temperature"):
        Trainer(small_config(tmp_path, temperature=0.5), dataset=ds, resume=True)


@pytest.mark.parametrize("kw,match", [
    (dict(method="simclr"), "method"),
    (dict(temperature=0), "temperature"),
    (dict(batch_size=1), "batch_size"),
    (dict(weights=[1.0]), "weights"),
    (dict(method="moco"), "instance criterion only"),
    (dict(form="sigmoid"), "thresholds"),
    (dict(momentum=1.0), "momentum"),
])
def test_bad_config_is_refused_with_the_field_name(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        small_config(tmp_path, **kw).validate()


def test_tiny_dataset_smaller_than_batch(tmp_path):
    ds = tiny_dataset(n_train=6, n_test=4)
    s = train(small_config(tmp_path, criteria=["instance"], method="moco", batch_size=256, epochs=1), dataset=ds)
    assert s["status"] == "completed" and s["batch_size"] == 6


def test_an_earlier_run_is_never_overwritten_by_accident(tmp_path):
    ds = tiny_dataset()
    train(small_config(tmp_path, stop_at_step=2), dataset=ds)
    before = (tmp_path / "run" / "metrics.jsonl").read_text()
    with pytest.raises(ValueError, match="already holds a run.*--resume.*--overwrite"):
        Trainer(small_config(tmp_path), dataset=ds)
    assert (tmp_path / "run" / "metrics.jsonl").read_text() == before
    s = train(small_config(tmp_path, epochs=1), dataset=ds, overwrite=True)
    assert s["status"] == "completed" and s["steps"] == 3


def test_weights_follow_the_order_the_criteria_were_given_in(tmp_path):
    # Mixed kinds out of any internal order; weights are read in the order given.
    cfg = small_config(tmp_path, criteria=["instance", "proto-8", "gt:stroke"], weights=[1.0, 0.0, 2.0],
                       cluster_warmup_epochs=0, epochs=1)
    train(cfg, dataset=tiny_dataset())
    for r in [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]:
        parts = r["loss_per_criterion"]
        assert list(parts) == ["instance", "proto-8", "gt:stroke"]
        assert r["loss"] == pytest.approx(parts["instance"] + 2 * parts["gt:stroke"], rel=1e-5)


def test_gt_expands_to_every_level_and_weights_count_the_levels(tmp_path):
    ds = tiny_dataset()
    s = train(small_config(tmp_path, criteria=["instance", "gt"], weights=[1.0, 0.5, 0.25], epochs=1), dataset=ds)
    assert s["criteria"] == ["instance", "gt:stroke", "gt:family"]
    with pytest.raises(ValueError, match="weights must have one value per criterion \\(3"):
        Trainer(small_config(tmp_path / "x", criteria=["instance", "gt"], weights=[1.0, 1.0]), dataset=ds)


def test_a_stop_on_an_epochs_last_step_keeps_its_record_and_evaluation(tmp_path):
    ds = tiny_dataset()
    train(small_config(tmp_path / "a"), dataset=ds)
    train(small_config(tmp_path / "b", stop_at_step=3), dataset=ds)  # 3 steps per epoch
    train(small_config(tmp_path / "b"), dataset=ds, resume=True)
    a = [(r["step"], r["loss"], r.get("knn_top1")) for r in read_metrics(tmp_path / "a" / "run" / "metrics.jsonl") if "loss" in r]
    b = [(r["step"], r["loss"], r.get("knn_top1")) for r in read_metrics(tmp_path / "b" / "run" / "metrics.jsonl") if "loss" in r]
    assert [x[0] for x in b] == [x[0] for x in a] == list(range(1, 10))
    assert [x[2] is not None for x in b] == [x[2] is not None for x in a]
    for (_, la, ka), (_, lb, kb) in zip(a, b):
        assert la == pytest.approx(lb, rel=1e-6, abs=1e-7)
        assert ka == kb


def test_resume_without_a_checkpoint_starts_over_without_duplicating_steps(tmp_path):
    ds = tiny_dataset()
    run = tmp_path / "run"
    run.mkdir()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 1, "epoch": 0.3, "loss": 1.0, "loss_per_criterion": {},
                                                   "lr": 0.0}) + "\n")
    train(small_config(tmp_path, epochs=1), dataset=ds, resume=True)
    assert [r["step"] for r in read_metrics(run / "metrics.jsonl") if "loss" in r] == [1, 2, 3]


def test_resume_refuses_fewer_epochs_than_were_trained(tmp_path):
    ds = tiny_dataset()
    train(small_config(tmp_path, epochs=2), dataset=ds)
    with pytest.raises(ValueError, match="epochs must not shrink"):
        Trainer(small_config(tmp_path, epochs=1), dataset=ds, resume=True)


def test_a_corrupt_checkpoint_is_reported_not_raised_raw(tmp_path):
    ds = tiny_dataset()
    train(small_config(tmp_path, stop_at_step=2), dataset=ds)
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.write_bytes(ckpt.read_bytes()[:100])
    with pytest.raises(ValueError, match="cannot read checkpoint"):
        Trainer(small_config(tmp_path), dataset=ds, resume=True)


def test_more_clusters_than_samples_is_refused_before_training(tmp_path):
    with pytest.raises(ValueError, match="proto-64 asks for 64 clusters but the training set has only 48"):
        Trainer(small_config(tmp_path, criteria=["instance", "proto-64"]), dataset=tiny_dataset())


@pytest.mark.parametrize("kw,match", [
    (dict(amp="no"), "amp must be bool"),
    (dict(epochs=True), "epochs must be int"),
    (dict(batch_size=64.5), "batch_size must be int"),
    (dict(lr=float("inf")), "lr must be finite"),
    (dict(warmup_epochs=float("nan")), "warmup_epochs must be finite"),
    (dict(seed=-1), "seed"),
    (dict(device="tpu"), "device must be"),
    (dict(device="cuda:7"), "CUDA|cuda"),
])
def test_config_types_and_devices_are_checked(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        Trainer(small_config(tmp_path, **kw), dataset=tiny_dataset())


def test_a_warmup_longer_than_the_budget_is_warned_about(tmp_path):
    with pytest.warns(UserWarning, match="never join the loss"):
        Trainer(small_config(tmp_path, epochs=2, cluster_warmup_epochs=3), dataset=tiny_dataset())


def test_proto_is_instance_during_warmup_then_supcon_on_the_pseudo_labels_alone(tmp_path):
    ds = tiny_dataset()
    trainer = Trainer(small_config(tmp_path, method="proto", criteria=["instance", "kmeans-4"]), dataset=ds)
    s = trainer.fit()
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if "loss" in r]
    for r in rows:
        assert list(r["loss_per_criterion"]) == (["instance"] if r["step"] <= 3 else ["kmeans-4"])
    assert s["criteria"] == ["instance", "kmeans-4"] and "faithfulness" in s
    # P_s of an inspection batch: uniform over the keys in the anchor's k-means cluster, own view included.
    idx = torch.arange(12)
    expl, names, _ = trainer.explain(idx)
    assert names == ["kmeans-4"]
    table = trainer.criteria.criteria[1].table[0, idx]
    same = (table[:, None] == table[None, :]).float()
    torch.testing.assert_close(expl.relativeness, same / same.sum(1, keepdim=True))


@pytest.mark.parametrize("criteria", [["instance", "kmeans-4", "kmeans-2"], ["instance", "gt"], ["instance"]])
def test_proto_takes_exactly_one_clustering(tmp_path, criteria):
    with pytest.raises(ValueError, match="method 'proto' takes the instance criterion and one clustering"):
        small_config(tmp_path, method="proto", criteria=criteria).validate()


def test_kmeans_criteria_are_refit_on_the_final_features_before_they_are_evaluated(tmp_path):
    from sklearn.cluster import KMeans

    ds = tiny_dataset()
    trainer = Trainer(small_config(tmp_path, method="proto", criteria=["instance", "kmeans-4"], epochs=2), dataset=ds)
    summary = trainer.fit()
    keys = torch.nn.functional.normalize(trainer._key_features(ds.train.images), dim=1).numpy()
    want = KMeans(4, n_init=1, random_state=0 * 1000 + 2).fit(keys)  # seed 0, epoch = epochs
    torch.testing.assert_close(trainer.criteria.learned[0].centroids, torch.as_tensor(want.cluster_centers_,
                                                                                     dtype=torch.float32))
    test_keys = torch.nn.functional.normalize(trainer._key_features(ds.test.images), dim=1)
    npz = np.load(tmp_path / "run" / "eval.npz")
    np.testing.assert_array_equal(npz["criteria_test_labels"][0], want.predict(test_keys.numpy()))
    assert summary["criteria"] == ["instance", "kmeans-4"]


def test_explaining_only_a_criterion_that_is_not_on_yet_says_so(tmp_path):
    trainer = Trainer(small_config(tmp_path, cluster_warmup_epochs=2), dataset=tiny_dataset())
    trainer.train_step(torch.arange(16), 0.0)
    with pytest.raises(ValueError, match="none of these criteria is on at epoch 0.00.*cluster_warmup_epochs=2"):
        trainer.explain(torch.arange(8), only=["proto-8"])
