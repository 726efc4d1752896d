"""Tests of dflows.config: validation messages, dict round trips and unknown settings."""

import dataclasses
import math

import pytest

from dflows.config import ConfigError, FlowConfig, TrainConfig, recommended_configs
from dflows.flow import DiscreteFlow


def with_field(config_class, field, value):
    """Return a default ``config_class`` with one field set to ``value``."""
    return dataclasses.replace(config_class(), **{field: value})


# Defaults.


def test_defaults_are_valid():
    FlowConfig().validate()
    TrainConfig().validate()


def test_recommended_configs_valid():
    flow, train = recommended_configs("ring8", grid=40)

    assert flow.vocab_size == 40
    assert recommended_configs()[0].vocab_size == 91
    assert isinstance(train, TrainConfig)


def test_config_error_is_value_error():
    assert issubclass(ConfigError, ValueError)


# Invalid values.


FLOW_CASES = [
    ("vocab_size", 1),
    ("vocab_size", 4097),
    ("vocab_size", 91.0),
    ("vocab_size", True),
    ("vocab_size", "91"),
    ("vocab_size", None),
    ("num_variables", 1),
    ("num_variables", 1025),
    ("layers", 0),
    ("layers", 65),
    ("layers", 2.5),
    ("layer_type", "rotate"),
    ("layer_type", None),
    ("conditioner", "cnn"),
    ("hidden", 0),
    ("hidden", 65537),
    ("identity_bias", math.nan),
    ("identity_bias", math.inf),
    ("identity_bias", 100.5),
    ("identity_bias", -101),
    ("identity_bias", "1"),
    ("identity_bias", False),
    ("init_std", -0.1),
    ("init_std", math.nan),
    ("init_std", 101.0),
]


@pytest.mark.parametrize(("field", "value"), FLOW_CASES)
def test_flow_config_rejects_invalid(field, value):
    with pytest.raises(ConfigError, match=f"^{field}\\b"):
        with_field(FlowConfig, field, value).validate()


TRAIN_CASES = [
    ("method", "newton"),
    ("steps", -1),
    ("steps", 10.0),
    ("objective", "mean"),
    ("batch_size", 0),
    ("batch_size", (1 << 22) + 1),
    ("lr", 0.0),
    ("lr", 11.0),
    ("lr", math.nan),
    ("lr", "0.01"),
    ("base_lr", -0.1),
    ("base_lr", math.inf),
    ("lr_final", -1e-3),
    ("lr_final", math.nan),
    ("temperature", 0.0),
    ("temperature", 1e-5),
    ("temperature", 101.0),
    ("temperature_final", 0.0),
    ("temperature_final", math.nan),
    ("restarts", -1),
    ("restarts", 1001),
    ("coarse_sweeps", 0),
    ("input_gradient", 1),
    ("input_gradient", "yes"),
    ("base_init", "zeros"),
    ("seed", -1),
    ("seed", 2**63),
    ("seed", 1.5),
    ("device", ""),
    ("device", 0),
    ("device", None),
    ("threads", 0),
    ("threads", 1025),
]


@pytest.mark.parametrize(("field", "value"), TRAIN_CASES)
def test_train_config_rejects_invalid(field, value):
    with pytest.raises(ConfigError, match=f"^{field}\\b"):
        with_field(TrainConfig, field, value).validate()


def test_invalid_message_names_range():
    with pytest.raises(ConfigError, match=r"^layers=65 is out of range: use a value from 1 to 64$"):
        with_field(FlowConfig, "layers", 65).validate()


def test_invalid_message_lists_choices():
    with pytest.raises(ConfigError, match=r"use one of \('exact', 'sampled'\)"):
        with_field(TrainConfig, "objective", "mean").validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [("vocab_size", 2), ("vocab_size", 4096), ("layers", 64), ("init_std", 0.0), ("identity_bias", -100)],
)
def test_flow_config_accepts_limits(field, value):
    with_field(FlowConfig, field, value).validate()


@pytest.mark.parametrize(
    ("field", "value"),
    [("steps", 0), ("lr_final", 0.0), ("base_lr", 0.0), ("seed", 2**63 - 1), ("temperature", 1e-4)],
)
def test_train_config_accepts_limits(field, value):
    with_field(TrainConfig, field, value).validate()


def test_flow_rejects_invalid_config():
    with pytest.raises(ConfigError, match="^vocab_size"):
        DiscreteFlow(FlowConfig(vocab_size=1))


# Dict round trips.


def test_flow_config_round_trip():
    config = FlowConfig(
        vocab_size=17, num_variables=3, layers=5, layer_type="affine",
        conditioner="mlp", hidden=12, identity_bias=-2.5, init_std=0.3,
    )

    data = config.to_dict()

    assert FlowConfig.from_dict(data) == config
    assert data["layer_type"] == "affine"


def test_train_config_round_trip():
    config = TrainConfig(
        method="gradient", steps=7, objective="sampled", batch_size=33, lr=0.2, base_lr=0.05,
        lr_final=0.001, temperature=0.7, temperature_final=0.02, restarts=3, coarse_sweeps=9,
        input_gradient=False, base_init="marginals", seed=11, device="cpu", threads=2,
    )

    assert TrainConfig.from_dict(config.to_dict()) == config


def test_to_dict_lists_every_field():
    for config_class in (FlowConfig, TrainConfig):
        names = {field.name for field in dataclasses.fields(config_class)}
        assert set(config_class().to_dict()) == names, config_class.__name__


def test_to_dict_is_a_copy():
    config = FlowConfig()

    data = config.to_dict()
    data["layers"] = 9

    assert config.layers == 2


def test_from_dict_fills_defaults():
    assert FlowConfig.from_dict({"vocab_size": 12}) == FlowConfig(vocab_size=12)
    assert TrainConfig.from_dict({}) == TrainConfig()


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(ConfigError, match="^unknown FlowConfig settings: colour, depth$"):
        FlowConfig.from_dict({"vocab_size": 12, "depth": 3, "colour": "red"})


def test_from_dict_rejects_train_key_in_flow():
    with pytest.raises(ConfigError, match="^unknown FlowConfig settings: lr$"):
        FlowConfig.from_dict({"lr": 0.1})


def test_from_dict_rejects_unknown_train_keys():
    with pytest.raises(ConfigError, match="^unknown TrainConfig settings: momentum$"):
        TrainConfig.from_dict({"momentum": 0.9})


def test_from_dict_validates_values():
    with pytest.raises(ConfigError, match="^vocab_size"):
        FlowConfig.from_dict({"vocab_size": 0})


@pytest.mark.parametrize("data", [None, [("vocab_size", 5)], "vocab_size=5"])
def test_from_dict_rejects_non_dict(data):
    with pytest.raises(ConfigError, match="FlowConfig needs a dict"):
        FlowConfig.from_dict(data)
