"""dflows: discrete normalizing flows on categorical data, with exact evaluation on grids.

The public API::

    model = dflows.load("ring.dflow")       # a DiscreteFlow with target and history
    z = model.forward(x)                     # data -> latent, int64 (N, D) in [0, K)
    x = model.inverse(z)                     # latent -> data
    model.log_prob(x)                        # exact log q(x) in nats, (N,)
    model.sample(1000)                       # (1000, D) samples
    dflows.save(model, "ring.dflow")
"""

from .config import ConfigError, FlowConfig, TrainConfig, recommended_configs
from .devices import DeviceError, available_devices, resolve_device
from .flow import DiscreteFlow
from .layers import CouplingLayer
from .metrics import Metrics, evaluate
from .modelfile import ModelFileError, load, save
from .targets import PRESETS, TargetError, load_target, preset, validate_target
from .trainer import RunResult, Snapshot, Trainer, TrainingDiverged, create_flow

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "CouplingLayer",
    "DeviceError",
    "DiscreteFlow",
    "FlowConfig",
    "Metrics",
    "ModelFileError",
    "PRESETS",
    "RunResult",
    "Snapshot",
    "TargetError",
    "TrainConfig",
    "Trainer",
    "TrainingDiverged",
    "available_devices",
    "create_flow",
    "evaluate",
    "load",
    "load_target",
    "preset",
    "recommended_configs",
    "resolve_device",
    "save",
    "validate_target",
]
