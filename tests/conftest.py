"""Fixtures for the explorer tests (tests/test_explorer_*.py).

Qt runs offscreen, preferences go to a temporary INI file, every dialog of the window is
replaced by a recorder, and each explorer test fails if it leaves a thread running.
"""

from __future__ import annotations

import os
import threading

import pytest

# Must be set before Qt is imported anywhere in the test process.
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")


def _is_explorer_test(request) -> bool:
    return request.module.__name__.rsplit(".", 1)[-1].startswith("test_explorer")


@pytest.fixture(autouse=True)
def no_threads_left(request):
    """Fail an explorer test that leaves a job thread or an extra Python thread running."""
    yield
    if not _is_explorer_test(request):
        return
    from explorer.worker import running_threads

    running = running_threads()
    assert not running, f"job threads still running: {[t.objectName() for t in running]}"
    # A _DummyThread represents a thread that the threading module did not start, here a
    # QThread that logged something. The module never removes them, so they are checked
    # as QThreads above instead.
    extra = [
        thread.name
        for thread in threading.enumerate()
        if thread is not threading.main_thread() and not isinstance(thread, threading._DummyThread)
    ]
    assert not extra, f"Python threads still alive: {extra}"


@pytest.fixture
def settings_path(tmp_path, monkeypatch):
    """Return the path of a fresh INI file for preferences; the user's are never touched."""
    from PySide6 import QtCore

    folder = tmp_path / "qt-settings"
    folder.mkdir()
    # Anything that still builds a default QSettings lands here too.
    for format_ in (QtCore.QSettings.Format.NativeFormat, QtCore.QSettings.Format.IniFormat):
        QtCore.QSettings.setPath(format_, QtCore.QSettings.Scope.UserScope, str(folder))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(folder))
    return tmp_path / "explorer.ini"


class DialogRecorder:
    """Replacement for the window's dialogs that records each call and returns preset replies."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []
        self.confirmations: list[str] = []
        self.save_questions: list[str] = []
        self.confirm_answer = True
        self.save_answer = "discard"
        self.open_paths: list[str | None] = []
        self.save_paths: list[tuple[str, str] | None] = []
        self.sample_count: int | None = 1000

    def install(self, window) -> None:
        window.show_error = self.show_error
        window.confirm = self.confirm
        window.ask_save_changes = self.ask_save_changes
        window.choose_open_file = self.choose_open_file
        window.choose_save_file = self.choose_save_file
        window.ask_sample_count = lambda: self.sample_count

    def show_error(self, title: str, message: str) -> None:
        self.errors.append((title, message))

    def confirm(self, title: str, message: str) -> bool:
        self.confirmations.append(message)
        return self.confirm_answer

    def ask_save_changes(self, message: str) -> str:
        self.save_questions.append(message)
        return self.save_answer

    def choose_open_file(self, caption: str, filters: str):
        if not self.open_paths:
            raise AssertionError(f"unexpected open dialog: {caption}")
        return self.open_paths.pop(0)

    def choose_save_file(self, caption: str, filters: str, suggested: str):
        if not self.save_paths:
            raise AssertionError(f"unexpected save dialog: {caption}")
        return self.save_paths.pop(0)


def make_window(qtbot, settings_path, grid: int | None = None, dialogs: DialogRecorder | None = None):
    """Create a MainWindow with recorded dialogs; ``grid`` switches to that K first."""
    from PySide6 import QtCore

    from explorer.main_window import MainWindow

    settings = QtCore.QSettings(str(settings_path), QtCore.QSettings.Format.IniFormat)
    window = MainWindow(settings)
    dialogs = dialogs or DialogRecorder()
    dialogs.install(window)
    window.dialogs = dialogs
    qtbot.addWidget(window)
    if grid is not None and grid != window.editor.size:
        window.panel.flow_editors["vocab_size"].widget.setValue(grid)
        window.refresh_preview()
    return window


def close_window(window) -> None:
    """Close without prompts and wait for any job, so no thread outlives the test."""
    window.close_wait_ms = 60_000
    window.close_without_prompt()
    if window.thread is not None:
        window.thread.wait()


@pytest.fixture
def window(qtbot, settings_path):
    """The main window at K = 12, recommended settings otherwise, dialogs recorded."""
    win = make_window(qtbot, settings_path, grid=12)
    yield win
    close_window(win)
