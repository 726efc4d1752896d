"""Helpers shared by the benchmark scripts: timed training runs and heatmap images."""

from __future__ import annotations

import os
import platform
import statistics
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

import dflows
from dflows.config import FlowConfig, TrainConfig

# Colour stops of the heatmaps, from no probability (dark blue) to the maximum (pale yellow).
_STOPS = np.array(
    [
        [0.0, 13, 8, 50],
        [0.25, 70, 30, 120],
        [0.5, 180, 55, 100],
        [0.75, 245, 140, 60],
        [1.0, 252, 245, 170],
    ]
)


@dataclass
class Run:
    """The outcome of one training run."""

    nll: float
    seconds: float
    steps: int
    model: dflows.DiscreteFlow


def train(target: np.ndarray, flow: FlowConfig, train_config: TrainConfig) -> Run:
    """Train a fresh flow on ``target`` and return its exact NLL and wall time."""
    model = dflows.create_flow(flow, train_config.seed)
    trainer = dflows.Trainer(model, target, train_config)
    started = time.perf_counter()
    trainer.run()
    seconds = time.perf_counter() - started
    return Run(trainer.evaluate().nll, seconds, trainer.step_count, model)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.3f} (max {max(values):.3f})"


def machine() -> str:
    """Describe the CPU, core count, Python and torch versions."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch thread(s)"
    )


def heatmap(values: np.ndarray, scale: int = 4, log: bool = False):
    """Render a 2D array as a Pillow image: row 0 at the top, brighter means larger."""
    from PIL import Image

    values = np.asarray(values, dtype=np.float64)
    if log:
        positive = values[values > 0]
        floor = positive.max() * 1e-4 if positive.size else 1.0
        values = np.log(np.maximum(values, floor)) - np.log(floor)
    top = values.max()
    level = values / top if top > 0 else values
    channels = [np.interp(level, _STOPS[:, 0], _STOPS[:, i]) for i in (1, 2, 3)]
    pixels = np.stack(channels, axis=-1).round().astype(np.uint8)
    image = Image.fromarray(pixels, mode="RGB")
    return image.resize((image.width * scale, image.height * scale), Image.NEAREST)


def panel_figure(panels: list[tuple[str, str, np.ndarray]], path: Path, scale: int = 4) -> None:
    """Write a row of heatmaps with a title above and a caption below each one."""
    from PIL import Image, ImageDraw, ImageFont

    images = [heatmap(values, scale) for _, _, values in panels]
    try:
        font = ImageFont.load_default(size=18)
    except TypeError:  # Pillow before 10.1 has only the fixed bitmap font
        font = ImageFont.load_default()
    margin, title_height, caption_height = 16, 34, 30
    width = sum(image.width for image in images) + margin * (len(images) + 1)
    height = max(image.height for image in images) + title_height + caption_height + margin
    figure = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(figure)
    x = margin
    for (title, caption, _), image in zip(panels, images):
        figure.paste(image, (x, title_height))
        draw.text((x + image.width / 2, title_height / 2), title, fill="black", font=font, anchor="mm")
        draw.text(
            (x + image.width / 2, title_height + image.height + caption_height / 2),
            caption, fill="black", font=font, anchor="mm",
        )
        x += image.width + margin
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.save(path)
