"""The dflows-explorer entry point, launched as a user would, in a subprocess."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import dflows
from dflows.config import recommended_configs
from dflows.trainer import create_flow
from explorer.app import parse_arguments

REPO = Path(__file__).resolve().parent.parent
TIMEOUT_S = 120


def run_app(arguments: list[str], settings_path: Path, executable: list[str] | None = None):
    environment = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    command = (executable or [sys.executable, "-m", "explorer"]) + [
        "--settings", str(settings_path), *arguments
    ]
    return subprocess.run(
        command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S
    )


def test_python_m_explorer_launches_and_quits(settings_path):
    result = run_app(["--quit-after-ms", "500"], settings_path)
    assert result.returncode == 0, result.stderr
    assert settings_path.exists()  # preferences went to the temporary file


def test_console_script_opens_a_model_file(settings_path, tmp_path):
    script = shutil.which("dflows-explorer", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the dflows-explorer script is not installed next to this Python")
    flow, train = recommended_configs("gaussian", 10)
    model = create_flow(flow, train.seed)
    model.target = dflows.preset("gaussian", 10)
    model.train_config = train.to_dict()
    path = tmp_path / "model.dflow"
    dflows.save(model, path)

    result = run_app([str(path), "--quit-after-ms", "500", "--debug"], settings_path, [script])
    assert result.returncode == 0, result.stderr
    assert "Could not open" not in result.stderr


def test_closing_during_training_exits_cleanly(settings_path):
    # Starts training until stopped, then closes the window while the worker runs.
    code = textwrap.dedent(
        """
        import sys
        from PySide6 import QtCore
        import explorer.main_window as main_window
        from explorer import app

        original = main_window.MainWindow.__init__

        def start_training(self, *args, **kwargs):
            original(self, *args, **kwargs)
            self.panel.flow_editors["vocab_size"].widget.setValue(24)
            self.panel.train_editors["method"].set_value("gradient")
            self.panel.train_editors["steps"].set_value(0)
            self.snapshot_shown.connect(lambda _s: QtCore.QTimer.singleShot(300, self.close_without_prompt))
            QtCore.QTimer.singleShot(0, self.train)

        main_window.MainWindow.__init__ = start_training
        sys.exit(app.main(sys.argv[1:]))
        """
    )
    if "method" not in {field for field in dflows.TrainConfig.__dataclass_fields__}:
        code = code.replace('self.panel.train_editors["method"].set_value("gradient")', "")
    environment = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run(
        [sys.executable, "-c", code, "--settings", str(settings_path), "--debug"],
        cwd=REPO, env=environment, capture_output=True, text=True, timeout=TIMEOUT_S,
    )
    assert result.returncode == 0, result.stderr
    assert "stop requested" in result.stderr or "halting (close)" in result.stderr
    assert "window closed" in result.stderr


def test_arguments_leave_qt_options_to_qt():
    options, rest = parse_arguments(["model.dflow", "--quit-after-ms", "10", "-platform", "offscreen"])
    assert options.file == "model.dflow"
    assert options.quit_after_ms == 10
    assert rest == ["-platform", "offscreen"]


def test_no_display_message():
    from explorer.app import display_problem

    assert "no display" in display_problem({}, "linux")
    assert display_problem({"DISPLAY": ":0"}, "linux") is None
    assert display_problem({"WAYLAND_DISPLAY": "wayland-0"}, "linux") is None
    assert display_problem({"QT_QPA_PLATFORM": "offscreen"}, "linux") is None
    assert display_problem({}, "darwin") is None
