"""Model and training settings, with validation and plain-dict round trips."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from .layers import CONDITIONERS, LAYER_TYPES

MAX_VOCAB_SIZE = 4096
MAX_LAYERS = 64
OBJECTIVES = ("exact", "sampled")
METHODS = ("search", "gradient")


class ConfigError(ValueError):
    """A setting has an invalid value; the message names the setting and the valid range."""


def _check_range(name: str, value: Any, low: float, high: float, kind: type = int) -> None:
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{name} must be an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ConfigError(f"{name} must be finite, got {value!r}")
    if not low <= value <= high:
        raise ConfigError(f"{name}={value} is out of range: use a value from {low} to {high}")


def _from_dict(cls, data: dict[str, Any]):
    if not isinstance(data, dict):
        raise ConfigError(f"{cls.__name__} needs a dict, got {type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(str(key) for key in set(data) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} settings: {', '.join(unknown)}")
    config = cls(**data)
    config.validate()
    return config


@dataclass
class FlowConfig:
    """The architecture of a ``DiscreteFlow``.

    Attributes:
        vocab_size: K, classes per variable (2 to 4096; targets on a grid use 2 to 256).
        num_variables: D, the number of variables (2 for a grid).
        layers: number of coupling layers; they alternate which half of the variables moves.
        layer_type: ``"shift"`` (``y = x + loc``) or ``"affine"`` (``y = loc + scale * x``).
        conditioner: ``"table"`` (lookup table) or ``"mlp"``.
        hidden: hidden width of the MLP conditioner.
        identity_bias: initial logit advantage of the identity map in every layer.
        init_std: standard deviation of the random initial logits.
    """

    vocab_size: int = 91
    num_variables: int = 2
    layers: int = 2
    layer_type: str = "shift"
    conditioner: str = "table"
    hidden: int = 64
    identity_bias: float = 1.0
    init_std: float = 0.01

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid setting."""
        _check_range("vocab_size", self.vocab_size, 2, MAX_VOCAB_SIZE)
        _check_range("num_variables", self.num_variables, 2, 1024)
        _check_range("layers", self.layers, 1, MAX_LAYERS)
        if self.layer_type not in LAYER_TYPES:
            raise ConfigError(f"layer_type {self.layer_type!r} is unknown; use one of {LAYER_TYPES}")
        if self.conditioner not in CONDITIONERS:
            raise ConfigError(
                f"conditioner {self.conditioner!r} is unknown; use one of {CONDITIONERS}"
            )
        _check_range("hidden", self.hidden, 1, 65536)
        _check_range("identity_bias", self.identity_bias, -100.0, 100.0, float)
        _check_range("init_std", self.init_std, 0.0, 100.0, float)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "FlowConfig":
        return _from_dict(cls, data)


@dataclass
class TrainConfig:
    """The settings of a ``Trainer``: the method, its schedule and where it runs.

    Two methods are available. ``"search"`` (lookup-table conditioners on a grid only) is an
    annealed exact search over the classes the tables pick. It starts from the best of several
    coarse-grid searches (see ``dflows.search``). ``"gradient"`` is Adam on straight-through
    gradients, the method of Tran et al. (2019), and works with every conditioner.

    Attributes:
        method: ``"search"`` or ``"gradient"``.
        steps: sweeps (search) or optimiser steps (gradient) of a run; 0 means until
            stopped. The search's coarse starts come on top of these.
        objective: ``"exact"`` minimises the expected NLL ``-sum_x p(x) log q(x)`` over the
            target's cells; ``"sampled"`` minimises the mean NLL of a batch drawn from it.
        batch_size: samples per step for the sampled objective.
        lr: Adam learning rate of the coupling layers.
        base_lr: Adam learning rate of the base logits; None uses ``lr``.
        lr_final: learning rate at the last step (cosine decay); None keeps ``lr`` constant.
        temperature: at the first step, the straight-through softmax temperature (gradient)
            or the annealing temperature in nats per unit of row mass (search).
        temperature_final: temperature at the last step (geometric schedule); None keeps
            ``temperature`` constant.
        restarts: coarse-grid starts of the search (0 starts at full resolution).
        coarse_sweeps: sweeps of each coarse start.
        coarse_factor: the coarse grid of the search's starts is ``K / coarse_factor`` cells
            per axis; None takes turns between 13, 9 and 6.
        input_gradient: let gradients flow into the conditioners' inputs (gradient method).
            Off by default: on the ring it trains no worse, and without it shift flows with
            lookup tables take the aggregated path of ``dflows.aggregated``, whose cost is
            linear in the batch and needs no one-hot codes.
        base_init: ``"uniform"`` or ``"marginals"`` (start the base at the target's marginals).
        seed: seed of the weights, the batches and the samples.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"mps"``.
        threads: torch intra-op threads while training.
    """

    method: str = "search"
    steps: int = 400
    objective: str = "exact"
    batch_size: int = 1024
    lr: float = 0.01
    base_lr: float | None = None
    lr_final: float | None = None
    temperature: float = 0.1
    temperature_final: float | None = 0.002
    restarts: int = 16
    coarse_sweeps: int = 200
    coarse_factor: float | None = None
    input_gradient: bool = False
    base_init: str = "uniform"
    seed: int = 0
    device: str = "auto"
    threads: int = 1

    def validate(self) -> None:
        """Raise ``ConfigError`` naming the first invalid setting."""
        if self.method not in METHODS:
            raise ConfigError(f"method {self.method!r} is unknown; use one of {METHODS}")
        _check_range("steps", self.steps, 0, 10**9)
        if self.objective not in OBJECTIVES:
            raise ConfigError(f"objective {self.objective!r} is unknown; use one of {OBJECTIVES}")
        _check_range("batch_size", self.batch_size, 1, 1 << 22)
        _check_range("lr", self.lr, 1e-8, 10.0, float)
        for name in ("base_lr", "lr_final"):
            value = getattr(self, name)
            if value is not None:
                _check_range(name, value, 0.0, 10.0, float)
        _check_range("temperature", self.temperature, 1e-4, 100.0, float)
        if self.temperature_final is not None:
            _check_range("temperature_final", self.temperature_final, 1e-4, 100.0, float)
        if not isinstance(self.input_gradient, bool):
            raise ConfigError(f"input_gradient must be True or False, got {self.input_gradient!r}")
        if self.base_init not in ("uniform", "marginals"):
            raise ConfigError(
                f"base_init {self.base_init!r} is unknown; use 'uniform' or 'marginals'"
            )
        _check_range("restarts", self.restarts, 0, 1000)
        _check_range("coarse_sweeps", self.coarse_sweeps, 1, 100000)
        if self.coarse_factor is not None:
            _check_range("coarse_factor", self.coarse_factor, 1.5, 1000.0, float)
        _check_range("seed", self.seed, 0, 2**63 - 1)
        if not isinstance(self.device, str) or not self.device:
            raise ConfigError(f"device must be a name such as 'cpu' or 'cuda', got {self.device!r}")
        _check_range("threads", self.threads, 1, 1024)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "TrainConfig":
        return _from_dict(cls, data)


def recommended_configs(
    preset: str | None = None,
    grid: int | None = None,
    method: str = "search",
    conditioner: str = "table",
) -> tuple[FlowConfig, TrainConfig]:
    """Return the best model and training settings known for a preset (or any target).

    ``grid`` sets K and defaults to 91. ``method`` picks the settings of the exact search
    (the default, for lookup-table conditioners) or of straight-through gradients. An
    ``"mlp"`` conditioner always trains with gradients. These are the defaults of
    ``dflows train`` and of the app; ``benchmarks/ablation.py`` measures them.
    """
    if method not in METHODS:
        raise ConfigError(f"method {method!r} is unknown; use one of {METHODS}")
    if conditioner not in CONDITIONERS:
        raise ConfigError(f"conditioner {conditioner!r} is unknown; use one of {CONDITIONERS}")
    if conditioner == "mlp":
        method = "gradient"
    flow = FlowConfig(vocab_size=91 if grid is None else grid, layers=4, conditioner=conditioner)
    train = TrainConfig(method=method)
    if conditioner == "mlp":
        # With a small initial spread, the identity bias dominates the MLP's outputs and its
        # gradients vanish: it never leaves the identity. A spread of 1 lets rows differ.
        # NOTE: even so, MLP conditioners learn far less than lookup tables with
        # straight-through gradients (5.06 against 4.59 nats on a 32 x 32 test target whose
        # factorized model scores 5.71).
        flow.init_std = 1.0
    if method == "gradient":
        # On the ring, deeper stacks train worse with gradients (2 layers: 6.67 nats, 4: 6.87,
        # 8: 7.07), and a falling temperature and a faster base each help a little.
        flow.layers = 2
        train.steps = 2000
        train.temperature = 1.0
        train.temperature_final = 0.1
        train.base_lr = 0.1
    elif preset == "ring8":
        # One coarse cell per Gaussian: at K = 91 the starts search a 7 x 7 grid.
        train.coarse_factor = 13.0
    flow.validate()
    train.validate()
    return flow, train
