"""Background training from the window: snapshots, controls, live settings, failures."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PySide6 import QtCore

import dflows
import dflows.trainer
from dflows.devices import DeviceError
from dflows.trainer import TrainingDiverged
from explorer.main_window import RunState
from explorer.worker import running_threads

from conftest import close_window, make_window

WAIT_MS = 60_000


def set_train_value(window, name: str, value) -> None:
    window.panel.train_editors[name].set_value(value)


def use_gradient(window, steps: int = 0, lr: float = 0.01) -> None:
    """Switch to the gradient method, which takes live learning-rate changes."""
    set_train_value(window, "method", "gradient")
    set_train_value(window, "steps", steps)
    set_train_value(window, "lr", lr)


def start_and_wait_for_snapshot(qtbot, window, start=None):
    with qtbot.waitSignal(window.snapshot_shown, timeout=WAIT_MS) as blocker:
        (start or window.train)()
    return blocker.args[0]


def stop_and_wait(qtbot, window, action=None):
    with qtbot.waitSignal(window.job_finished, timeout=WAIT_MS) as blocker:
        (action or window.stop)()
    return blocker.args[0]


def test_train_sends_snapshots_then_stop(qtbot, window):
    set_train_value(window, "steps", 0)
    snapshot = start_and_wait_for_snapshot(qtbot, window)
    assert window.state is RunState.RUNNING
    assert snapshot.density.shape == (12, 12)
    assert snapshot.data_histogram.sum() == window.panel.samples()

    result = stop_and_wait(qtbot, window)
    assert result.reason == "stopped"
    assert window.state is RunState.IDLE
    assert window.trainer is None
    assert window.job is None
    assert window.model.history["step"][-1] >= 1
    assert window.dirty
    np.testing.assert_array_equal(window.density_view.values, window.last_snapshot.density)
    assert window.layer_view.slider.maximum() == len(window.model.layers)


def test_run_completes_its_steps(qtbot, window):
    use_gradient(window, steps=5)
    result = stop_and_wait(qtbot, window, window.train)
    assert result.reason == "completed"
    assert result.steps == 5
    assert window.state is RunState.IDLE
    assert window.model.history["step"][-1] == 5


def test_pause_resume_with_space(qtbot, window):
    set_train_value(window, "steps", 0)
    start_and_wait_for_snapshot(qtbot, window, window.toggle_action.trigger)

    result = stop_and_wait(qtbot, window, window.toggle_action.trigger)
    assert result.reason == "stopped"
    assert window.state is RunState.PAUSED
    assert window.pause_action.text() == "Resume"
    paused_at = window.trainer.step_count

    snapshot = start_and_wait_for_snapshot(qtbot, window, window.toggle_action.trigger)
    assert window.state is RunState.RUNNING
    assert snapshot.step > paused_at
    stop_and_wait(qtbot, window)
    assert window.state is RunState.IDLE


def test_settings_locked_while_training(qtbot, window):
    use_gradient(window)
    start_and_wait_for_snapshot(qtbot, window)
    editors = window.panel.train_editors
    assert not window.panel.flow_editors["vocab_size"].widget.isEnabled()
    assert not editors["seed"].widget.isEnabled()
    assert editors["lr"].widget.isEnabled()
    assert editors["temperature"].widget.isEnabled()
    assert not window.editor.editable
    assert not window.train_action.isEnabled()

    stop_and_wait(qtbot, window)
    assert window.panel.flow_editors["vocab_size"].widget.isEnabled()
    assert window.editor.editable
    assert window.train_action.isEnabled()


def test_live_learning_rate_reaches_the_worker(qtbot, window):
    use_gradient(window, lr=0.01)
    start_and_wait_for_snapshot(qtbot, window)

    edit = window.panel.train_editors["lr"].widget
    edit.setText("0.05")
    edit.editingFinished.emit()
    qtbot.waitUntil(lambda: window.last_snapshot.lr == pytest.approx(0.05), timeout=WAIT_MS)

    stop_and_wait(qtbot, window)
    assert window.model.train_config["lr"] == 0.01  # the run's settings are unchanged


def test_live_change_while_paused_applies_on_resume(qtbot, window):
    use_gradient(window, lr=0.01)
    start_and_wait_for_snapshot(qtbot, window)
    stop_and_wait(qtbot, window, window.pause)

    edit = window.panel.train_editors["temperature"].widget
    edit.setText("0.5")
    edit.editingFinished.emit()
    assert window.pending_live == {"temperature": 0.5}

    snapshot = start_and_wait_for_snapshot(qtbot, window, window.resume)
    qtbot.waitUntil(lambda: window.last_snapshot.temperature == pytest.approx(0.5), timeout=WAIT_MS)
    assert snapshot.step >= 1
    stop_and_wait(qtbot, window)


def test_single_step(qtbot, window):
    use_gradient(window, steps=10)
    result = stop_and_wait(qtbot, window, window.single_step)
    assert result.steps == 1
    assert window.state is RunState.PAUSED
    assert window.model.history["step"] == [1]

    stop_and_wait(qtbot, window, window.single_step)
    assert window.model.history["step"] == [1, 2]

    result = stop_and_wait(qtbot, window, window.resume)
    assert result.reason == "completed"
    assert window.model.history["step"][-1] == 10
    assert window.state is RunState.IDLE


def test_close_during_training_stops_the_worker(qtbot, settings_path):
    window = make_window(qtbot, settings_path, grid=12)
    set_train_value(window, "steps", 0)
    start_and_wait_for_snapshot(qtbot, window)
    thread = window.thread
    window.close_wait_ms = WAIT_MS

    window.close()

    assert window.dialogs.save_questions  # training made unsaved changes
    assert window.job is None
    assert thread.isFinished()
    assert running_threads() == []


def test_close_is_cancelled_by_the_save_prompt(qtbot, window):
    window.set_dirty()
    window.dialogs.save_answer = "cancel"
    window.show()
    assert not window.close()
    assert window.isVisible()


# Failures during training reach the window and leave it usable.


def test_diverged_training_shows_an_error(qtbot, window, monkeypatch):
    use_gradient(window)

    def diverge(self):
        raise TrainingDiverged("the loss became non-finite at step 1; lower the learning rate")

    monkeypatch.setattr(dflows.trainer.Trainer, "step", diverge)
    result = stop_and_wait(qtbot, window, window.train)

    assert result.reason == "diverged"
    assert window.dialogs.errors[0][0] == "Training diverged"
    assert "lower the learning rate" in window.dialogs.errors[0][1]
    assert window.state is RunState.PAUSED
    window.stop()
    assert window.state is RunState.IDLE


def test_missing_device_shows_error(qtbot, window, monkeypatch):
    def missing(name):
        raise DeviceError("device 'cuda:0' was requested, but torch finds no CUDA GPU on this machine")

    monkeypatch.setattr(dflows.trainer, "resolve_device", missing)
    result = stop_and_wait(qtbot, window, window.train)
    assert result.reason == "failed"
    title, message = window.dialogs.errors[0]
    assert title == "Training failed"
    assert "cuda:0" in message
    assert "Choose another device" in message
    assert window.state is RunState.IDLE

    monkeypatch.undo()
    use_gradient(window, steps=2)
    result = stop_and_wait(qtbot, window, window.train)
    assert result.reason == "completed"


@pytest.mark.parametrize(
    "error, expected",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2 GiB"), "ran out of memory"),
        (MemoryError(), "ran out of memory"),
        (RuntimeError("unexpected failure in a layer"), "RuntimeError: unexpected failure in a layer"),
    ],
)
def test_exceptions_in_training_show_an_error(qtbot, window, monkeypatch, error, expected):
    use_gradient(window)

    def fail(self):
        raise error

    monkeypatch.setattr(dflows.trainer.Trainer, "step", fail)
    result = stop_and_wait(qtbot, window, window.train)
    assert result.reason == "failed"
    assert expected in window.dialogs.errors[0][1]
    assert window.state is RunState.IDLE
    assert window.train_action.isEnabled()


def test_all_zero_target_is_not_trained(qtbot, window):
    window.editor.clear()
    window.train()
    assert window.job is None
    assert window.state is RunState.IDLE
    title, message = window.dialogs.errors[0]
    assert "all zero" in message
    assert "Paint at least one cell" in message
    assert window.editor.canvas.is_empty()


def test_invalid_setting_is_not_trained(qtbot, window):
    edit = window.panel.train_editors["temperature"].widget
    edit.setText("hot")
    window.train()
    assert window.job is None
    assert "temperature" in window.dialogs.errors[0][1]
    assert window.panel.train_editors["temperature"].error_label.isVisibleTo(window.panel)


def test_reset_discards_the_history(qtbot, window):
    use_gradient(window, steps=3)
    stop_and_wait(qtbot, window, window.train)
    assert window.model.history["step"]

    window.reset()
    assert window.dialogs.confirmations  # the training was unsaved
    assert window.model is not None
    assert not window.model.history.get("step")
    assert window.state is RunState.IDLE


def test_reset_while_training(qtbot, window):
    set_train_value(window, "steps", 0)
    start_and_wait_for_snapshot(qtbot, window)
    stop_and_wait(qtbot, window, window.reset)
    assert window.state is RunState.IDLE
    assert not window.model.history.get("step")


def test_continue_training_keeps_the_history(qtbot, window):
    use_gradient(window, steps=3)
    stop_and_wait(qtbot, window, window.train)
    stop_and_wait(qtbot, window, window.train)
    assert window.model.history["step"] == [1, 2, 3, 4, 5, 6]


def test_new_window_opens_on_ring8_recommended(qtbot, settings_path):
    window = make_window(qtbot, settings_path)
    try:
        flow, train = dflows.config.recommended_configs("ring8", 91)
        assert window.panel.flow_config() == flow
        shown = window.panel.train_config()
        assert shown.to_dict() | {"device": train.device} == train.to_dict()
        np.testing.assert_allclose(window.editor.probabilities(), dflows.preset("ring8", 91))
    finally:
        close_window(window)


def test_loss_hover_names_step_and_values(qtbot, window):
    use_gradient(window, steps=5)
    stop_and_wait(qtbot, window, window.train)
    window.show()
    qtbot.waitExposed(window)
    loss = window.loss_view
    box = loss.plot_widget.getPlotItem().getViewBox()
    box.setRange(xRange=(0, 6), padding=0)
    QtCore.QCoreApplication.processEvents()
    low, high = box.viewRange()[1]

    loss._mouse_moved(box.mapViewToScene(QtCore.QPointF(3, (low + high) / 2)))

    text = loss.hover_label.text()
    assert text.startswith("step 3")
    assert "loss at step 3 = " in text
    assert "NLL at step " in text
    assert "H(p) = " in text


def test_log_scale_changes_levels_and_labels(window):
    window.log_action.setChecked(True)
    low, high = window.scales["probability"].levels
    assert high <= 0
    assert high - low == pytest.approx(6.0)
    assert window.density_view.colour_bar.axis.labelText == "log10"
    np.testing.assert_allclose(
        window.density_view.image.image, np.log10(np.maximum(window.density_view.values, 10.0**low))
    )
    window.log_action.setChecked(False)
    assert window.scales["probability"].levels[0] == 0.0
