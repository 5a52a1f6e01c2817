"""One training step of RCL (instance + online hierarchical clustering) against MoCo v3, same model and batch.

    .venv/bin/python benchmarks/train_step.py [--dataset digits] [--rounds 15] [--batch-size 256]

Interleaved rounds (one MoCo step, one RCL step) so a busy machine slows both alike; prints the median of
per-round ratios and, last, one JSON line. Run it with ``OMP_WAIT_POLICY=ACTIVE`` in front to measure the
effect of OpenMP's wait policy (rcl_core defaults it to PASSIVE when imported before torch).
"""
import argparse
import json
import os
import statistics
import tempfile
import time

import rcl_core  # noqa: F401  (first: sets the OpenMP wait policy before torch loads)
import torch

from rcl_core.config import TrainConfig
from rcl_core.datasets import load_dataset
from rcl_core.trainer import Trainer


def measure(dataset: str = "digits", batch_size: int = 256, rounds: int = 15, device: str = "auto") -> dict:
    """Median step times of MoCo v3 and RCL (instance,proto-64,proto-16, criteria on) and their per-round ratio."""
    ds = load_dataset(dataset)
    trainers = {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("moco", "rcl"):
            cfg = TrainConfig(method=method, dataset=dataset, batch_size=batch_size, device=device,
                              run_dir=os.path.join(tmp, method), progress=False, cluster_warmup_epochs=0)
            trainers[method] = Trainer(cfg, dataset=ds)
        idx = torch.arange(min(batch_size, len(ds.train)), device=trainers["moco"].device)
        sync = torch.cuda.synchronize if trainers["moco"].device.type == "cuda" else (lambda: None)
        times = {m: [] for m in trainers}
        for t in trainers.values():  # warm-up: allocations, online clustering initialisation
            t.train_step(idx, 1.0)
        for _ in range(rounds):
            for method, t in trainers.items():
                sync()
                start = time.perf_counter()
                t.train_step(idx, 1.0)
                sync()
                times[method].append(time.perf_counter() - start)
    ratios = [r / m for r, m in zip(times["rcl"], times["moco"])]
    return {"dataset": dataset, "batch_size": len(idx), "device": str(trainers["moco"].device),
            "threads": torch.get_num_threads(), "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY"),
            "rounds": rounds, "moco_step_ms": 1000 * statistics.median(times["moco"]),
            "rcl_step_ms": 1000 * statistics.median(times["rcl"]),
            "train_step_ratio_rcl_vs_moco": statistics.median(ratios)}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--rounds", type=int, default=15)
    p.add_argument("--device", default="auto")
    args = p.parse_args()
    result = measure(args.dataset, args.batch_size, args.rounds, args.device)
    print(f"{args.dataset}, batch {result['batch_size']}, {result['device']}, {result['threads']} threads, "
          f"OMP_WAIT_POLICY={result['omp_wait_policy']}: MoCo {result['moco_step_ms']:.1f} ms, "
          f"RCL {result['rcl_step_ms']:.1f} ms, ratio {result['train_step_ratio_rcl_vs_moco']:.3f}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
