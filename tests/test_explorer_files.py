"""Files in the window: save and open, bad files, targets, samples, PNG export, preferences."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pytest
import torch
from PIL import Image
from PySide6 import QtCore

import dflows
from explorer.main_window import MainWindow, RunState

from conftest import close_window, make_window

WAIT_MS = 60_000
MODEL_FILTER = "dflows model (*.dflow)"


def train_steps(qtbot, window, steps: int = 4) -> None:
    window.panel.train_editors["method"].set_value("gradient")
    window.panel.train_editors["steps"].set_value(steps)
    with qtbot.waitSignal(window.job_finished, timeout=WAIT_MS):
        window.train()
    assert window.state is RunState.IDLE


def save_to(window, path) -> bool:
    window.dialogs.save_paths.append((str(path), MODEL_FILTER))
    return window.save_as()


def test_save_then_open_restores_everything(qtbot, window, settings_path, tmp_path):
    window.panel.train_editors["seed"].set_value(7)
    window.panel.flow_editors["layers"].set_value(3)
    window.panel._model_edited("layers")
    train_steps(qtbot, window)
    path = tmp_path / "trained.dflow"
    assert save_to(window, path)
    assert not window.dirty
    assert window.windowTitle().startswith("trained.dflow")

    saved = window.model
    other = make_window(qtbot, settings_path)
    try:
        assert other.open_model(path)
        assert other.dialogs.errors == []
        # The editor keeps weights scaled to a maximum of 1, so the target comes back
        # up to float rounding.
        np.testing.assert_allclose(other.editor.probabilities(), window.editor.probabilities(), rtol=1e-12)
        np.testing.assert_array_equal(other.model.target, dflows.load(path).target)
        assert other.panel.flow_config() == window.panel.flow_config()
        assert other.panel.train_config() == window.panel.train_config()
        np.testing.assert_array_equal(other.model.log_density(), saved.log_density())
        assert other.model.history == saved.history
        assert other.path == path
        assert not other.dirty
        assert other.recent_files()[0] == str(path.resolve())

        # Training continues from the loaded weights and history.
        last_step = other.model.history["step"][-1]
        train_steps(qtbot, other, steps=2)
        assert other.model.history["step"][-2:] == [last_step + 1, last_step + 2]
    finally:
        close_window(other)


def test_save_without_training_stores_an_untrained_model(qtbot, window, tmp_path):
    path = tmp_path / "untrained"
    assert save_to(window, path)
    model = dflows.load(tmp_path / "untrained.dflow")
    assert model.history == {}
    np.testing.assert_allclose(model.target, window.editor.probabilities())


def test_save_is_quiet_after_first_save_as(qtbot, window, tmp_path):
    path = tmp_path / "model.dflow"
    assert save_to(window, path)
    window.editor.fill()
    assert window.dirty
    assert window.save()  # no dialog: the recorder would raise
    np.testing.assert_allclose(dflows.load(path).target, window.editor.probabilities())


def test_save_during_training_pauses_first(qtbot, window, tmp_path):
    window.panel.train_editors["steps"].set_value(0)
    with qtbot.waitSignal(window.snapshot_shown, timeout=WAIT_MS):
        window.train()
    path = tmp_path / "running.dflow"
    assert save_to(window, path)
    assert window.state is RunState.PAUSED
    assert dflows.load(path).history["step"] == window.model.history["step"]
    window.stop()


# Bad files: each one shows an error that names the file, and the painting is kept.


def write_foreign_archive(path) -> None:
    buffer = io.BytesIO()
    torch.save({"format": "something-else", "weights": torch.zeros(3)}, buffer)
    path.write_bytes(buffer.getvalue())


def write_corrupt_model(path, source) -> None:
    data = bytearray(source.read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["random bytes", "truncated", "corrupt", "foreign archive", "zip", "missing"])
def test_bad_model_file_shows_an_error(qtbot, window, tmp_path, kind):
    good = tmp_path / "good.dflow"
    assert save_to(window, good)
    window.editor.fill()  # unsaved painting that must survive
    painted = window.editor.canvas.weights.copy()
    path = tmp_path / f"bad {kind}.dflow"
    if kind == "random bytes":
        path.write_bytes(np.random.default_rng(0).bytes(2000))
    elif kind == "truncated":
        path.write_bytes(good.read_bytes()[:500])
    elif kind == "corrupt":
        write_corrupt_model(path, good)
    elif kind == "foreign archive":
        write_foreign_archive(path)
    elif kind == "zip":
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("readme.txt", "not a model")

    window.dialogs.save_answer = "cancel"
    assert not window.open_model(path)  # cancelled at the save prompt
    window.dialogs.save_answer = "discard"
    assert not window.open_model(path)

    title, message = window.dialogs.errors[-1]
    assert title == "Could not open the model"
    assert str(path) in message
    assert "Choose a .dflow file" in message
    np.testing.assert_array_equal(window.editor.canvas.weights, painted)
    assert window.state is RunState.IDLE


def test_unreadable_image_shows_an_error(qtbot, window, tmp_path):
    painted = window.editor.canvas.weights.copy()
    path = tmp_path / "broken.png"
    path.write_text("this is not an image")
    window.dialogs.open_paths.append(str(path))
    assert not window.load_target_file()
    title, message = window.dialogs.errors[-1]
    assert str(path) in message
    assert "PNG or JPEG" in message
    np.testing.assert_array_equal(window.editor.canvas.weights, painted)


def test_negative_npy_shows_an_error(qtbot, window, tmp_path):
    path = tmp_path / "negative.npy"
    np.save(path, -np.ones((12, 12)))
    window.dialogs.open_paths.append(str(path))
    assert not window.load_target_file()
    assert str(path) in window.dialogs.errors[-1][1]
    assert "negative" in window.dialogs.errors[-1][1]


def test_all_zero_target_is_not_saved(qtbot, window, tmp_path):
    window.editor.clear()
    path = tmp_path / "empty.dflow"
    assert not save_to(window, path)
    assert str(path) in window.dialogs.errors[-1][1]
    assert "all zero" in window.dialogs.errors[-1][1]
    assert not path.exists()


# Targets.


def test_load_image_target(qtbot, window, tmp_path):
    pixels = np.zeros((24, 24), dtype=np.uint8)
    pixels[2:6, 16:22] = 255  # a bright block in the top right
    path = tmp_path / "block.png"
    Image.fromarray(pixels).save(path)
    window.dialogs.open_paths.append(str(path))
    assert window.load_target_file()
    target = window.editor.probabilities()
    assert target.shape == (12, 12)
    assert target[1:3, 8:11].sum() == pytest.approx(1.0)
    window.editor.undo()
    assert not np.allclose(window.editor.probabilities(), target)


def test_save_and_load_target_npy_and_png(qtbot, window, tmp_path):
    target = window.editor.probabilities()
    window.dialogs.save_paths.append((str(tmp_path / "target"), "NumPy array (*.npy)"))
    assert window.save_target_file()
    np.testing.assert_allclose(np.load(tmp_path / "target.npy"), target)

    window.dialogs.save_paths.append((str(tmp_path / "target.png"), "PNG image (*.png)"))
    assert window.save_target_file()
    with Image.open(tmp_path / "target.png") as image:
        assert image.size == (12, 12)

    window.editor.clear()
    window.dialogs.open_paths.append(str(tmp_path / "target.npy"))
    assert window.load_target_file()
    np.testing.assert_allclose(window.editor.probabilities(), target)


# Exports.


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_export_samples(qtbot, window, tmp_path, suffix):
    path = tmp_path / f"samples{suffix}"
    window.dialogs.sample_count = 500
    window.dialogs.save_paths.append((str(path), ""))
    assert window.export_samples()
    if suffix == ".npy":
        samples = np.load(path)
    else:
        assert path.read_text().splitlines()[0] == "row,col"
        samples = np.loadtxt(path, delimiter=",", skiprows=1, dtype=np.int64)
    assert samples.shape == (500, 2)
    assert samples.min() >= 0
    assert samples.max() < 12


def test_export_every_view_and_the_window(qtbot, window, tmp_path):
    window.show()
    for key in window.views:
        path = tmp_path / f"{key}.png"
        window.dialogs.save_paths.append((str(tmp_path / key), "PNG image (*.png)"))
        assert window.export_view(key), key
        with Image.open(path) as image:
            assert image.size[0] > 50
    window.dialogs.save_paths.append((str(tmp_path / "window.png"), "PNG image (*.png)"))
    assert window.export_window()
    with Image.open(tmp_path / "window.png") as image:
        assert image.size[0] > 300


def test_export_to_a_missing_folder_shows_an_error(qtbot, window, tmp_path):
    path = tmp_path / "no such folder" / "view.png"
    window.dialogs.save_paths.append((str(path), "PNG image (*.png)"))
    assert not window.export_view("model")
    assert str(path) in window.dialogs.errors[-1][1]


# Prompts and preferences.


def test_new_asks_before_losing_changes(qtbot, window):
    window.editor.fill()
    window.dialogs.save_answer = "cancel"
    window.new_document()
    assert window.dialogs.save_questions
    assert window.editor.size == 12  # unchanged

    window.dialogs.save_answer = "discard"
    window.new_document()
    assert window.editor.size == 91
    assert not window.dirty


def test_k_change_asks_before_discarding_a_trained_model(qtbot, window):
    train_steps(qtbot, window, steps=2)
    window.dialogs.confirm_answer = False
    window.panel.flow_editors["vocab_size"].widget.setValue(10)
    assert window.editor.size == 12
    assert window.panel.grid_size() == 12
    assert window.model.history["step"]

    window.dialogs.confirm_answer = True
    window.panel.flow_editors["vocab_size"].widget.setValue(10)
    assert window.editor.size == 10
    qtbot.waitUntil(lambda: window.model is not None, timeout=WAIT_MS)  # the preview model
    assert window.model.vocab_size == 10
    assert not window.model.history.get("step")


def test_preferences_are_remembered(qtbot, settings_path, tmp_path, monkeypatch):
    first = make_window(qtbot, settings_path)
    first.log_action.setChecked(True)
    first.editor.size_spin.setValue(7)
    first.show()
    qtbot.waitExposed(first)
    first.resize(1200, 800)
    QtCore.QCoreApplication.processEvents()
    geometry = bytes(first.saveGeometry())
    first._add_recent(tmp_path / "a.dflow")
    close_window(first)

    # The offscreen screen is smaller than the window, so Qt shrinks a restored geometry;
    # check that the saved geometry is what the next window restores.
    restored = []
    original = MainWindow.restoreGeometry
    monkeypatch.setattr(
        MainWindow, "restoreGeometry", lambda self, data: restored.append(bytes(data)) or original(self, data)
    )
    second = make_window(qtbot, settings_path)
    try:
        assert restored == [geometry]
        assert second.log_action.isChecked()
        assert second.editor.size_spin.value() == 7
        assert second.recent_files() == [str((tmp_path / "a.dflow").resolve())]
        assert second.recent_menu.actions()[0].text() == str((tmp_path / "a.dflow").resolve())
    finally:
        close_window(second)
    assert settings_path.exists()


def test_opening_a_missing_recent_file_shows_an_error(qtbot, window, tmp_path):
    path = tmp_path / "gone.dflow"
    window._add_recent(path)
    window.recent_menu.actions()[0].trigger()
    assert str(path.resolve()) in window.dialogs.errors[-1][1]
    assert "not found" in window.dialogs.errors[-1][1]
