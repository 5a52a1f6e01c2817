"""Sweeps: variants are validated up front, finished runs are read back, interrupted ones resume."""
import json

import pytest

from rcl_core.sweep import completed_summary, run_sweep, variants
from test_trainer import small_config, tiny_dataset


def test_variants_validate_and_name_folders(tmp_path):
    base = small_config(tmp_path)
    configs = variants(base, tmp_path / "sweep", {"rcl τ=0.1": {"temperature": 0.1}, "w 1/.5": {"weights": [1, .5, .5]}})
    assert [c.run_dir for c in configs.values()] == [str(tmp_path / "sweep" / "rcl-τ=0.1"),
                                                     str(tmp_path / "sweep" / "w-1-.5")]
    assert configs["rcl τ=0.1"].temperature == 0.1 and configs["rcl τ=0.1"].epochs == base.epochs
    with pytest.raises(ValueError, match="sweep run 'bad'.*temperature"):
        variants(base, tmp_path, {"bad": {"temperature": -1.0}})
    with pytest.raises(ValueError, match="share the folder"):
        variants(base, tmp_path, {"a b": {}, "a/b": {}})
    with pytest.raises(ValueError, match="unknown config fields"):
        variants(base, tmp_path, {"x": {"temprature": 0.1}})


def test_a_finished_run_is_read_back_and_a_changed_one_is_refused(tmp_path):
    ds = tiny_dataset()
    configs = variants(small_config(tmp_path, dataset="tiny", epochs=2), tmp_path / "s", {"a": {}, "moco": {"method": "moco",
                                                                                       "criteria": []}})
    seen = []
    first = run_sweep(configs, dataset=ds, on_run=lambda n, s, cached: seen.append((n, cached)))
    assert seen == [("a", False), ("moco", False)]
    stamp = (tmp_path / "s" / "a" / "summary.json").stat().st_mtime_ns
    again = run_sweep(configs, dataset=ds, on_run=lambda n, s, cached: seen.append((n, cached)))
    assert seen[2:] == [("a", True), ("moco", True)]
    assert again == first and (tmp_path / "s" / "a" / "summary.json").stat().st_mtime_ns == stamp
    # The same folder with another config: the trainer refuses to resume it rather than mix runs.
    changed = variants(small_config(tmp_path, dataset="tiny", epochs=2, lr=5e-3), tmp_path / "s", {"a": {}})
    assert completed_summary(changed["a"]) is None
    with pytest.raises(ValueError, match="config differs"):
        run_sweep(changed, dataset=ds)


def test_an_interrupted_sweep_resumes_where_it_stopped(tmp_path):
    ds = tiny_dataset()
    configs = variants(small_config(tmp_path, dataset="tiny", epochs=3), tmp_path / "s", {"a": {}, "b": {"temperature": 0.3}})
    stopped = variants(small_config(tmp_path, dataset="tiny", epochs=3, stop_at_step=4), tmp_path / "s", {"a": {}})
    with pytest.raises(KeyboardInterrupt, match="sweep stopped during run 'a' at step 4"):
        run_sweep(stopped, dataset=ds)
    summaries = run_sweep(configs, dataset=ds)
    assert summaries["a"]["steps"] == summaries["b"]["steps"] == 9
    rows = [json.loads(line) for line in (tmp_path / "s" / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "event" not in r] == list(range(1, 10))  # nothing lost, nothing twice
    assert any(r.get("event") == "resume" and r["step"] == 4 for r in rows)


def test_a_dataset_of_another_name_is_refused(tmp_path):
    configs = variants(small_config(tmp_path, dataset="digits"), tmp_path / "s", {"a": {}})
    with pytest.raises(ValueError, match="trains on 'digits' but dataset 'tiny'"):
        run_sweep(configs, dataset=tiny_dataset())


def test_mistakes_are_found_before_the_first_run_trains(tmp_path):
    base = small_config(tmp_path, dataset="tiny")
    with pytest.raises(ValueError, match="strictly decreasing"):
        variants(base, tmp_path, {"x": {"criteria": ["instance", "proto-4", "proto-16"]}})
    with pytest.raises(ValueError, match="unknown criteria"):
        variants(base, tmp_path, {"x": {"criteria": ["instance", "protos-4"]}})
    with pytest.raises(ValueError, match="must be a dict"):
        variants(base, tmp_path, {"x": 0.1})
    configs = variants(small_config(tmp_path, dataset="digits"), tmp_path / "s", {"a": {}, "b": {"dataset": "nope"}})
    with pytest.raises(ValueError, match="sweep run 'b'.*nope"):
        run_sweep(configs)
    assert not (tmp_path / "s" / "a").exists()  # run "a" did not train first


def test_a_summary_of_an_older_evaluation_is_evaluated_again_not_retrained(tmp_path):
    from rcl_core.trainer import EVALUATION_VERSION

    ds = tiny_dataset()
    configs = variants(small_config(tmp_path, dataset="tiny", epochs=2), tmp_path / "s", {"a": {}})
    first = run_sweep(configs, dataset=ds)["a"]
    assert first["evaluation_version"] == EVALUATION_VERSION
    run = tmp_path / "s" / "a"
    metrics = (run / "metrics.jsonl").read_text()
    old = {k: v for k, v in first.items() if k not in ("faithfulness", "evaluation_version")}
    (run / "summary.json").write_text(json.dumps(old))  # as an older version wrote it
    assert completed_summary(configs["a"]) is None
    seen = []
    again = run_sweep(configs, dataset=ds, on_run=lambda n, s, cached: seen.append(cached))["a"]
    assert seen == [False] and again["steps"] == first["steps"]
    assert (run / "metrics.jsonl").read_text().startswith(metrics)  # no step trained again
    for key in ("knn_top1", "linear_top1", "faithfulness", "learned_nmi", "evaluation_version"):
        assert again[key] == first[key], key


def test_where_the_data_lives_is_not_part_of_a_runs_identity(tmp_path):
    ds = tiny_dataset()
    configs = variants(small_config(tmp_path, dataset="tiny", epochs=1), tmp_path / "s", {"a": {}})
    run_sweep(configs, dataset=ds)
    moved = variants(small_config(tmp_path, dataset="tiny", epochs=1, data_dir=str(tmp_path / "elsewhere")),
                     tmp_path / "s", {"a": {}})
    assert completed_summary(moved["a"]) is not None
