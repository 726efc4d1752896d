"""Presets in the window, their thumbnails and icon, and the asset script."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

import dflows
from explorer import icons
from explorer.main_window import RunState

REPO_ASSETS = icons.SOURCE_ASSETS


@pytest.mark.parametrize("name", list(dflows.PRESETS))
def test_every_preset_loads(window, name):
    window.preset_actions[name].trigger()
    np.testing.assert_allclose(window.editor.probabilities(), dflows.preset(name, 12), atol=1e-15)
    assert window.editor.canvas.can_undo


def test_presets_menu_lists_every_preset_with_a_thumbnail(window):
    actions = window.presets_menu.actions()
    assert [action.text() for action in actions] == list(dflows.PRESETS)
    for action in actions:
        assert not action.icon().isNull()
        assert action.toolTip() == dflows.PRESETS[action.text()].description


def test_presets_are_disabled_while_training(qtbot, window):
    window.panel.train_editors["steps"].set_value(0)
    with qtbot.waitSignal(window.snapshot_shown, timeout=60_000):
        window.train()
    before = window.editor.canvas.weights.copy()
    window.load_preset("moons")
    np.testing.assert_array_equal(window.editor.canvas.weights, before)
    assert not window.presets_menu.isEnabled()
    with qtbot.waitSignal(window.job_finished, timeout=60_000):
        window.stop()
    assert window.state is RunState.IDLE
    assert window.presets_menu.isEnabled()


def mean_difference(path, pixels) -> float:
    stored = np.asarray(Image.open(path).convert("RGBA"), dtype=np.float64)
    assert stored.shape == pixels.shape, path
    return float(np.abs(stored - pixels).mean())


def test_repository_assets_match_the_drawing_code():
    # A small tolerance lets a preset change by rounding without failing here; anything
    # visible means the files are stale.
    stale = "is stale: run python scripts/make_assets.py"
    icon = REPO_ASSETS / icons.ICON_FILE
    assert mean_difference(icon, icons.icon_pixels()) < 1.0, f"{icon} {stale}"
    for name in dflows.PRESETS:
        path = REPO_ASSETS / icons.thumbnail_file(name)
        assert path.is_file(), f"{path} is missing: run python scripts/make_assets.py"
        assert mean_difference(path, icons.thumbnail_pixels(name)) < 1.0, f"{path} {stale}"


def test_icons_are_drawn_when_no_asset_exists(qapp, tmp_path, monkeypatch):
    monkeypatch.setattr(icons, "ASSET_FOLDERS", (tmp_path / "none",))
    assert icons.find_asset(icons.ICON_FILE) is None
    icon = icons.app_icon()
    assert not icon.isNull()
    image = icon.pixmap(icons.ICON_PIXELS, icons.ICON_PIXELS).toImage()
    assert image.width() == icons.ICON_PIXELS
    assert not icons.preset_icon("spiral").isNull()


def test_installed_copy_is_preferred(tmp_path, monkeypatch):
    installed, source = tmp_path / "installed", tmp_path / "source"
    for folder in (installed, source):
        folder.mkdir()
        (folder / icons.ICON_FILE).write_bytes(b"")
    monkeypatch.setattr(icons, "ASSET_FOLDERS", (installed, source))
    assert icons.find_asset(icons.ICON_FILE) == installed / icons.ICON_FILE
    (installed / icons.ICON_FILE).unlink()
    assert icons.find_asset(icons.ICON_FILE) == source / icons.ICON_FILE


def test_make_assets_script_writes_every_file(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_assets", REPO_ASSETS.parent / "scripts" / "make_assets.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--out", str(tmp_path)]) == 0
    written = sorted(path.name for path in tmp_path.iterdir())
    expected = sorted([icons.ICON_FILE, *(icons.thumbnail_file(name) for name in dflows.PRESETS)])
    assert written == expected


def test_recommended_settings_follow_the_preset(window):
    from dflows.config import recommended_configs

    window.load_preset("moons")
    window.panel.train_editors["seed"].set_value(5)
    window.panel.flow_editors["layers"].set_value(7)
    window.recommended_action.trigger()

    flow, train = recommended_configs("moons", 12)
    assert window.panel.flow_config() == flow
    assert window.panel.train_config().seed == train.seed
    assert window.dirty
