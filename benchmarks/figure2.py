"""Reproduce Figure 2 of Tran et al. (2019) and compare the authors' setup with ours.

The target is the 8-Gaussian ring on a 91 x 91 grid. The authors' configuration (edward2,
``examples/quantized_ring_of_gaussians.py``) is one shift layer with a 91 x 91 lookup-table
conditioner, a learned factorized base, straight-through temperature 0.1, Adam with learning
rate 0.01, batches of 128 and 500 steps. Ours is whatever ``dflows train`` uses by default.
Both are scored by their exact NLL over all 91 * 91 cells.

Usage::

    python benchmarks/figure2.py              # 5 seeds, writes docs/figure2.png and docs/figure2.md
    python benchmarks/figure2.py --seeds 1    # quicker
"""

from __future__ import annotations

import argparse
import statistics
from pathlib import Path

import numpy as np
import torch

import dflows
from dflows.config import FlowConfig, TrainConfig, recommended_configs
from dflows.metrics import entropy, factorized_entropy

from _common import machine, panel_figure, train

DOCS = Path(__file__).resolve().parent.parent / "docs"


def authors_configs(seed: int) -> tuple[FlowConfig, TrainConfig]:
    """Return the setup of the authors' Figure-2 script in this library's terms."""
    flow = FlowConfig(
        vocab_size=91, layers=1, layer_type="shift", conditioner="table",
        identity_bias=0.0, init_std=0.03,
    )
    train_config = TrainConfig(
        method="gradient", objective="sampled", batch_size=128, lr=0.01,
        temperature=0.1, temperature_final=None, steps=500, seed=seed, input_gradient=True,
        device="cpu", threads=1,
    )
    return flow, train_config


def our_configs(seed: int) -> tuple[FlowConfig, TrainConfig]:
    flow, train_config = recommended_configs("ring8", 91)
    train_config.seed = seed
    train_config.device = "cpu"
    return flow, train_config


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 0 .. N-1 for each setup")
    parser.add_argument("--out", type=Path, default=DOCS, help="folder for figure2.png and figure2.md")
    args = parser.parse_args()
    torch.set_num_threads(1)

    target = dflows.preset("ring8", 91)
    h = entropy(target)
    best_factorized = factorized_entropy(target)
    results: dict[str, list] = {"authors": [], "ours": []}
    for name, make in (("authors", authors_configs), ("ours", our_configs)):
        for seed in range(args.seeds):
            run = train(target, *make(seed))
            results[name].append(run)
            print(f"{name:8s} seed {seed}: NLL {run.nll:.4f} nats in {run.seconds:.1f} s ({run.steps} steps)", flush=True)

    # The figure shows seed 0 of each setup, laid out as in the paper plus our model.
    marginals = np.outer(target.sum(axis=1), target.sum(axis=0))
    authors, ours = results["authors"][0], results["ours"][0]
    panel_figure(
        [
            ("Data", f"H = {h:.3f} nats", target),
            ("Factorized base", f"NLL {best_factorized:.3f}", marginals),
            ("Authors' 1 flow", f"NLL {authors.nll:.3f}", authors.model.density()),
            ("Ours", f"NLL {ours.nll:.3f}", ours.model.density()),
        ],
        args.out / "figure2.png",
    )

    flow, train_config = our_configs(0)
    rows = [
        "| model | exact NLL (nats), seeds 0-{last} | median | max | time per run (s) |".format(last=args.seeds - 1),
        "|---|---|---|---|---|",
        f"| entropy H(x) (no model can go lower) | {h:.3f} | | | |",
        f"| best factorized model H(x1) + H(x2) | {best_factorized:.3f} | | | |",
    ]
    for name, label in (
        ("authors", "authors' setup: 1 shift layer, Adam 0.01, batch 128, 500 steps"),
        ("ours", f"ours: {flow.layers} shift layers, exact search, {train_config.steps} sweeps + {train_config.restarts} coarse starts"),
    ):
        values = [run.nll for run in results[name]]
        seconds = statistics.median(run.seconds for run in results[name])
        rows.append(
            f"| {label} | {', '.join(f'{v:.3f}' for v in values)} | {statistics.median(values):.3f} "
            f"| {max(values):.3f} | {seconds:.1f} |"
        )
    text = "\n".join(rows)
    (args.out / "figure2.md").write_text(
        "<!-- written by benchmarks/figure2.py -->\n" + text + f"\n\nMachine: {machine()}.\n"
    )
    print(text)


if __name__ == "__main__":
    main()
