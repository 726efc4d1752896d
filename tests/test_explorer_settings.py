"""Settings panel: every field, unknown fields of newer dflows versions, errors, locking."""

from __future__ import annotations

import dataclasses

import pytest

from dflows.config import ConfigError, FlowConfig, TrainConfig, recommended_configs
from dflows.devices import available_devices
from explorer import settings_panel
from explorer.settings_panel import SettingsPanel


@pytest.fixture
def panel(qtbot):
    flow, train = recommended_configs("ring8", 91)
    widget = SettingsPanel(flow, train)
    qtbot.addWidget(widget)
    return widget


def test_panel_round_trips_the_recommended_settings(panel):
    flow, train = recommended_configs("ring8", 91)
    assert panel.flow_config() == flow
    shown = panel.train_config()
    assert shown.to_dict() | {"device": train.device} == train.to_dict()


def test_panel_shows_every_config_field(panel):
    shown = set(panel.flow_editors) | set(panel.train_editors)
    fields = {field.name for cls in (FlowConfig, TrainConfig) for field in dataclasses.fields(cls)}
    assert shown == fields - settings_panel.HIDDEN_FIELDS


def test_values_round_trip(panel):
    flow = dataclasses.replace(panel.flow_config(), vocab_size=37, layers=5, conditioner="mlp", hidden=32)
    train = dataclasses.replace(
        panel.train_config(), steps=0, lr=0.003, base_lr=0.02, temperature=0.7, seed=12, threads=1
    )
    if "method" in panel.train_editors:
        train = dataclasses.replace(train, method="gradient")
    panel.set_configs(flow, train)
    assert panel.flow_config() == flow
    assert panel.train_config() == train
    assert panel.train_editors["steps"].until_stopped.isChecked()


def test_unknown_fields_get_editors(qtbot, monkeypatch):
    @dataclasses.dataclass
    class NewerTrainConfig(TrainConfig):
        warmup_steps: int = 5
        label_smoothing: float = 0.1
        clip_gradients: bool = True
        scheduler: str = "cosine"
        decay: float | None = None

    monkeypatch.setattr(settings_panel, "TrainConfig", NewerTrainConfig)
    flow, train = recommended_configs("ring8", 91)
    newer = NewerTrainConfig(**train.to_dict())
    panel = SettingsPanel(flow, newer)
    qtbot.addWidget(panel)

    for name in ("warmup_steps", "label_smoothing", "clip_gradients", "scheduler", "decay"):
        assert panel.train_editors[name].spec.group == "Advanced"
    panel.train_editors["warmup_steps"].widget.setValue(9)
    panel.train_editors["decay"].widget.setText("0.5")
    result = panel.train_config()
    assert isinstance(result, NewerTrainConfig)
    assert result.warmup_steps == 9
    assert result.label_smoothing == 0.1
    assert result.clip_gradients is True
    assert result.scheduler == "cosine"
    assert result.decay == 0.5


def test_invalid_number_is_explained_beside_the_field(panel):
    editor = panel.train_editors["lr"]
    editor.widget.setText("fast")
    with pytest.raises(ConfigError, match="lr"):
        panel.train_config()
    assert not editor.error_label.isHidden()
    assert "'fast' is not a number" in editor.error_label.text()

    editor.widget.setText("50")
    with pytest.raises(ConfigError, match="out of range"):
        panel.train_config()
    editor.widget.setText("0.02")
    panel.train_config()
    assert editor.error_label.isHidden()


def test_spin_box_ranges_prevent_invalid_values(panel):
    grid = panel.flow_editors["vocab_size"].widget
    assert (grid.minimum(), grid.maximum()) == (2, 256)
    layers = panel.flow_editors["layers"].widget
    assert (layers.minimum(), layers.maximum()) == (1, 32)


def test_search_with_mlp_is_explained(panel):
    if "method" not in panel.train_editors:
        pytest.skip("this dflows has no search method")
    panel.train_editors["method"].set_value("search")
    panel.flow_editors["conditioner"].set_value("mlp")
    with pytest.raises(ConfigError, match="lookup-table"):
        panel.train_config()
    assert not panel.train_editors["method"].error_label.isHidden()


def test_locking_leaves_live_fields_open(panel):
    if "method" in panel.train_editors:
        panel.train_editors["method"].set_value("gradient")
    panel.set_locked(True)
    assert not panel.flow_editors["vocab_size"].widget.isEnabled()
    assert not panel.train_editors["seed"].widget.isEnabled()
    assert panel.train_editors["lr"].widget.isEnabled()
    assert panel.train_editors["temperature"].widget.isEnabled()
    panel.set_locked(False)
    assert panel.flow_editors["vocab_size"].widget.isEnabled()


def test_live_change_is_signalled(qtbot, panel):
    edit = panel.train_editors["temperature"].widget
    edit.setText("0.25")
    with qtbot.waitSignal(panel.live_changed, timeout=1000) as blocker:
        edit.editingFinished.emit()
    assert blocker.args == ["temperature", 0.25]


def test_device_list_shows_only_present_devices(panel):
    combo = panel.train_editors["device"].widget
    names = [combo.itemData(index) for index in range(combo.count())]
    assert names == [name for name, _ in available_devices()]


def test_absent_device_falls_back(panel):
    flow, train = recommended_configs("ring8", 91)
    notes = panel.set_configs(flow, dataclasses.replace(train, device="cuda:7"))
    if any(name == "cuda:7" for name, _ in available_devices()):
        pytest.skip("this machine has a cuda:7")
    assert panel.train_config().device == "cpu"
    assert any("cuda:7" in note for note in notes)


def test_dependent_fields_follow_their_switches(panel):
    panel.flow_editors["conditioner"].widget.setCurrentIndex(
        panel.flow_editors["conditioner"].widget.findData("mlp")
    )
    assert panel.flow_editors["hidden"].widget.isEnabled()
    panel.flow_editors["conditioner"].widget.setCurrentIndex(
        panel.flow_editors["conditioner"].widget.findData("table")
    )
    assert not panel.flow_editors["hidden"].widget.isEnabled()
