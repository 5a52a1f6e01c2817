"""The ``rcl`` command end to end, in subprocesses, on tiny budgets."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

SMALL = ["--epochs", "2", "--batch-size", "128", "--width", "8", "--hidden-dim", "64", "--predictor-dim", "64",
         "--feature-dim", "32", "--log-every", "2", "--eval-every", "1", "--no-progress"]


def rcl(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lab.cli", *args], capture_output=True, text=True, cwd=cwd,
                          timeout=600)


def test_train_writes_the_run_directory_and_report(tmp_path):
    run = tmp_path / "run"
    out = rcl("train", "--method", "rcl", "--dataset", "digits", "--criteria", "instance,proto-16,proto-4",
              "--cluster-warmup-epochs", "1", "--run-dir", str(run), "--data-dir", str(tmp_path / "data"), *SMALL)
    assert out.returncode == 0, out.stderr
    printed = json.loads(out.stdout.strip().splitlines()[-1])
    assert printed["method"] == "rcl" and 0 <= printed["knn_top1"] <= 1
    for name in ("config.json", "metrics.jsonl", "summary.json", "checkpoint.pt", "eval.npz"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["criteria"] == ["instance", "proto-16", "proto-4"] and config["epochs"] == 2
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps_per_epoch = 1437 // 128
    assert rows[-1]["step"] == 2 * steps_per_epoch
    assert [r["step"] for r in rows if "knn_top1" in r] == [steps_per_epoch, 2 * steps_per_epoch]
    assert set(rows[-1]["loss_per_criterion"]) == {"instance", "proto-16", "proto-4"}
    summary = json.loads((run / "summary.json").read_text())
    assert summary["knn_top1"] == printed["knn_top1"]
    assert summary["dataset"] == "digits" and summary["epochs"] == 2 and set(summary["nmi"]) == {"digit"}
    ev = np.load(run / "eval.npz")
    assert ev["test_features"].shape == (360, 16) and list(ev["criteria_names"]) == ["proto-16", "proto-4"]

    out = rcl("report", str(run))
    assert out.returncode == 0, out.stderr
    page = (run / "report.html").read_text()
    assert "fig-loss" in page and "fig-results" in page and "proto-16" in page


def test_interrupted_train_resumes_from_its_checkpoint(tmp_path):
    run = tmp_path / "run"
    common = ["--method", "moco", "--run-dir", str(run), *SMALL]
    out = rcl("train", *common, "--stop-at-step", "13")
    assert out.returncode == 0 and "resume with" in out.stderr
    assert not (run / "summary.json").exists() and (run / "checkpoint.pt").exists()
    out = rcl("train", "--resume", "--run-dir", str(run))
    assert out.returncode == 0, out.stderr
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["event"] for r in rows if "event" in r] == ["stop", "resume"]
    assert json.loads((run / "summary.json").read_text())["steps"] == 22


@pytest.mark.parametrize("args,match", [
    (["--temperature", "0"], "temperature must be > 0"),
    (["--method", "byol"], "method must be one of"),
    (["--criteria", "instance,proto-4,proto-16"], "strictly decreasing"),
    (["--dataset", "imagenet"], "imagenet"),
    (["--form", "sigmoid", "--criteria", "instance,proto-8", "--thresholds", "0.2,0.5"], "strictly decreasing"),
])
def test_bad_flags_fail_with_one_clear_line(tmp_path, args, match):
    out = rcl("train", "--run-dir", str(tmp_path / "r"), "--epochs", "1", "--no-progress", *args)
    assert out.returncode == 2
    assert match in out.stderr and "Traceback" not in out.stderr


def test_demo_runs_both_methods_with_the_same_budget_and_writes_the_report(tmp_path):
    out = rcl("demo", "--epochs", "1", "--out", str(tmp_path / "demo"), "--quiet")
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) == {"moco_knn_top1", "rcl_knn_top1", "rcl_at_least_moco"}
    moco = json.loads((tmp_path / "demo" / "moco" / "summary.json").read_text())
    rcl_ = json.loads((tmp_path / "demo" / "rcl" / "summary.json").read_text())
    assert moco["method"] == "moco" and rcl_["method"] == "rcl"
    assert moco["steps"] == rcl_["steps"] and moco["epochs"] == rcl_["epochs"] == 1
    assert moco["criteria"] == ["instance"] and rcl_["criteria"][0] == "instance" and len(rcl_["criteria"]) > 1
    page = (tmp_path / "demo" / "report.html").read_text()
    assert page.count("fig-umap-") >= 2 and "MoCo v3" in page and "RCL" in page
    assert "<script src=" not in page


def test_rcl_lab_opens_jupyterlab_on_the_notebooks_with_notebook_01(monkeypatch, tmp_path, capsys):
    from lab import cli

    calls = []
    monkeypatch.setattr(cli.os, "execv", lambda exe, cmd: calls.append(cmd))
    monkeypatch.chdir(tmp_path)  # no notebooks/ here: the project's own folder is used
    assert cli.main(["lab", "--no-browser"]) == 0
    (cmd,) = calls
    root = Path(cli.__file__).resolve().parents[1] / "notebooks"
    assert cmd[1:4] == ["-m", "jupyter", "lab"] and f"--ServerApp.root_dir={root}" in cmd
    assert str(root / "01_relative_contrastive_loss.ipynb") in cmd and cmd[-1] == "--no-browser"
    assert cli.main(["lab", "--notebooks", str(tmp_path / "nope")]) != 0  # a clear error, not a traceback
    assert "nope does not exist" in capsys.readouterr().err


@pytest.mark.slow
def test_rcl_lab_serves_the_notebooks_from_any_folder(tmp_path):
    import os
    import secrets
    import socket
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(8)
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt"), "JUPYTER_CONFIG_DIR": str(tmp_path / "cfg"),
           "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"), "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "ws")}
    proc = subprocess.Popen([sys.executable, "-m", "lab.cli", "lab", "--no-browser", f"--port={port}",
                             f"--IdentityProvider.token={token}", "--ServerApp.ip=127.0.0.1"],
                            cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        names, deadline = None, time.monotonic() + 90
        while names is None and time.monotonic() < deadline and proc.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/contents?token={token}", timeout=5) as r:
                    names = [c["name"] for c in json.load(r)["content"]]
            except OSError:
                time.sleep(0.5)
        assert names is not None, proc.stdout.read1().decode() if proc.poll() is not None else "no answer"
        assert "01_relative_contrastive_loss.ipynb" in names  # the project's notebooks, from any cwd
    finally:
        os.killpg(proc.pid, 15)
        proc.wait(timeout=30)
