"""Measure, one at a time, the ideas that make discrete flows fit the 8-Gaussian ring.

Every row trains on the Figure-2 target (8 Gaussians on a ring, K = 91) for each seed and
reports the exact NLL in nats (entropy 6.320, best factorized model 7.352). Gradient rows
change one setting of a naive baseline. Search rows take parts of the default search away.
Depth rows compare stacks of 1 to 8 layers under the same number of steps.

Usage::

    python benchmarks/ablation.py                     # everything, 5 seeds (about an hour on 2 cores)
    python benchmarks/ablation.py --only search depth # some groups
    python benchmarks/ablation.py --seeds 2 --quick   # a smoke run
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
from pathlib import Path

import torch

import dflows
from dflows.config import FlowConfig, TrainConfig, recommended_configs
from dflows.metrics import entropy

from _common import machine, train

DOCS = Path(__file__).resolve().parent.parent / "docs"
GROUPS = ["recommended", "search", "depth", "gradient", "identity", "gaussian"]


def gradient_baseline() -> tuple[FlowConfig, TrainConfig]:
    """Four shift layers trained the naive way: random initial tables, batches, fixed rates."""
    flow = FlowConfig(vocab_size=91, layers=4, identity_bias=0.0, init_std=0.01)
    train_config = TrainConfig(
        method="gradient", objective="sampled", batch_size=1024, lr=0.01, steps=1000,
        temperature=0.1, temperature_final=None, device="cpu",
    )
    return flow, train_config


def gradient_rows() -> list[tuple[str, dict, dict]]:
    """Return each gradient idea on its own: (label, FlowConfig changes, TrainConfig changes)."""
    return [
        ("naive baseline (4 layers, random init, batch 1024, T 0.1, lr 0.01)", {}, {}),
        ("+ identity-biased initial tables (bias 1)", {"identity_bias": 1.0}, {}),
        ("+ temperature schedule 1.0 -> 0.1", {}, {"temperature": 1.0, "temperature_final": 0.1}),
        ("+ learning-rate schedule 0.01 -> 0.001 (cosine)", {}, {"lr_final": 0.001}),
        ("+ exact expected NLL instead of batches", {}, {"objective": "exact"}),
        ("+ location-scale (affine) layers", {"layer_type": "affine"}, {}),
        ("+ base started at the target's marginals", {}, {"base_init": "marginals"}),
        ("+ base learning rate 0.1", {}, {"base_lr": 0.1}),
        ("+ no gradient into conditioner inputs", {}, {"input_gradient": False}),
        (
            "all helpful gradient ideas together",
            {"identity_bias": 1.0},
            {"objective": "exact", "base_init": "marginals", "base_lr": 0.1, "lr_final": 0.001},
        ),
    ]


def identity_baseline() -> tuple[FlowConfig, TrainConfig]:
    """Return the naive baseline with identity-biased tables and without input gradients."""
    flow, train_config = gradient_baseline()
    flow.identity_bias = 1.0
    train_config.input_gradient = False
    return flow, train_config


def identity_rows() -> list[tuple[str, dict, dict]]:
    """Return each gradient idea on top of identity-biased tables, the idea that matters most."""
    return [
        ("identity-biased tables, no input gradients (4 layers, batch 1024, T 0.1, lr 0.01)", {}, {}),
        ("+ exact expected NLL instead of batches", {}, {"objective": "exact"}),
        ("+ temperature schedule 1.0 -> 0.1", {}, {"temperature": 1.0, "temperature_final": 0.1}),
        ("+ temperature schedule 0.1 -> 0.01", {}, {"temperature_final": 0.01}),
        ("+ learning-rate schedule 0.01 -> 0.001 (cosine)", {}, {"lr_final": 0.001}),
        ("+ learning rate 0.05", {}, {"lr": 0.05}),
        ("+ base started at the target's marginals", {}, {"base_init": "marginals"}),
        ("+ base learning rate 0.1", {}, {"base_lr": 0.1}),
        ("+ gradient into conditioner inputs", {}, {"input_gradient": True}),
        ("+ location-scale (affine) layers", {"layer_type": "affine"}, {}),
        ("+ 4000 steps", {}, {"steps": 4000}),
        ("2 layers", {"layers": 2}, {}),
        ("8 layers", {"layers": 8}, {}),
    ]


def search_rows() -> list[tuple[str, dict, dict]]:
    """Return the default search with parts taken away, and with affine layers added."""
    greedy = {"temperature": 1e-4, "temperature_final": 1e-4}
    return [
        ("greedy coordinate search from the identity (no annealing, no coarse starts)", {}, {**greedy, "restarts": 0}),
        ("annealed search, no coarse starts", {}, {"restarts": 0}),
        ("coarse starts, then greedy (no annealing)", {}, greedy),
        ("default: 16 coarse starts, then annealing", {}, {}),
        ("default with location-scale (affine) layers", {"layer_type": "affine"}, {}),
    ]


def depth_rows(steps: int) -> list[tuple[str, dict, dict]]:
    rows = [(f"default search, {n} layer{'s' if n > 1 else ''}", {"layers": n}, {}) for n in (1, 2, 4, 8)]
    rows.append((f"default search, 2 layers, {4 * steps} sweeps", {"layers": 2}, {"steps": 4 * steps}))
    return rows


def run_group(name, rows, make_base, seeds, quick, target):
    results = []
    for label, flow_changes, train_changes in rows:
        values, seconds = [], []
        for seed in range(seeds):
            flow, train_config = make_base()
            flow = dataclasses.replace(flow, **flow_changes)
            train_config = dataclasses.replace(train_config, seed=seed, device="cpu", **train_changes)
            if quick:
                train_config.steps = min(train_config.steps, 40)
                train_config.restarts = min(train_config.restarts, 2)
            run = train(target, flow, train_config)
            values.append(run.nll)
            seconds.append(run.seconds)
        record = {
            "group": name, "label": label, "nll": values,
            "median": statistics.median(values), "max": max(values),
            "seconds": statistics.median(seconds),
        }
        results.append(record)
        print(f"{name:8s} {label}: median {record['median']:.3f}, max {record['max']:.3f}, {record['seconds']:.1f} s/run", flush=True)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument(
        "--only", nargs="*", choices=GROUPS,
        help="run these groups and keep the other groups' results from an earlier ablation.json",
    )
    parser.add_argument("--quick", action="store_true", help="few steps: checks that the script runs")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for ablation.md and ablation.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    groups = args.only or GROUPS

    target = dflows.preset("ring8", 91)
    default_steps = recommended_configs("ring8", 91)[1].steps
    results = []
    if "recommended" in groups:
        for method in ("search", "gradient"):
            results += run_group(
                "recommended", [(f"recommended settings, {method} method", {}, {})],
                lambda method=method: recommended_configs("ring8", 91, method), args.seeds, args.quick, target,
            )
    if "search" in groups:
        results += run_group("search", search_rows(), lambda: recommended_configs("ring8", 91), args.seeds, args.quick, target)
    if "depth" in groups:
        results += run_group("depth", depth_rows(default_steps), lambda: recommended_configs("ring8", 91), args.seeds, args.quick, target)
    if "gradient" in groups:
        results += run_group("gradient", gradient_rows(), gradient_baseline, args.seeds, args.quick, target)
    if "identity" in groups:
        results += run_group("identity", identity_rows(), identity_baseline, args.seeds, args.quick, target)
    if "gaussian" in groups:
        gaussian = dflows.preset("gaussian")
        records = run_group(
            "gaussian", [("default settings on the gaussian preset (K = 30)", {}, {})],
            lambda: recommended_configs("gaussian", 30), args.seeds, args.quick, gaussian,
        )
        for record in records:
            record["entropy"] = entropy(gaussian)
        results += records

    previous = args.out / "ablation.json"
    if args.only and previous.exists():
        kept = [record for record in json.loads(previous.read_text()) if record["group"] not in groups]
        results = sorted(kept + results, key=lambda record: GROUPS.index(record["group"]))

    lines = [
        "<!-- written by benchmarks/ablation.py -->",
        f"Seeds 0-{args.seeds - 1}; exact NLL in nats on ring8 at K = 91 (entropy {entropy(target):.3f}, "
        "best factorized 7.352) unless the row says otherwise.",
        "",
        "| group | setting | median NLL | max NLL | all seeds | time per run (s) |",
        "|---|---|---|---|---|---|",
    ]
    for record in results:
        seeds = ", ".join(f"{v:.3f}" for v in record["nll"])
        lines.append(
            f"| {record['group']} | {record['label']} | {record['median']:.3f} | {record['max']:.3f} "
            f"| {seeds} | {record['seconds']:.1f} |"
        )
    for record in results:
        if "entropy" in record:
            lines.append("")
            lines.append(
                f"Gaussian preset: entropy {record['entropy']:.4f} nats; the largest NLL - entropy "
                f"over the seeds is {record['max'] - record['entropy']:.2e} nats."
            )
    lines += ["", f"Machine: {machine()}."]
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ablation.md").write_text("\n".join(lines) + "\n")
    (args.out / "ablation.json").write_text(json.dumps(results, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
