"""Entry point of ``dflows-explorer`` and ``python -m explorer``."""

from __future__ import annotations

import argparse
import logging
import os
import sys

log = logging.getLogger("explorer")

SETTINGS_ENVIRONMENT = "DFLOWS_EXPLORER_SETTINGS"


def parse_arguments(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """Parse the app's options; returns them and the arguments left for Qt."""
    parser = argparse.ArgumentParser(
        prog="dflows-explorer",
        description="Paint a target on a K x K grid, train a discrete normalizing flow on it "
        "and watch it learn.",
    )
    parser.add_argument("file", nargs="?", help="a .dflow model file to open")
    parser.add_argument(
        "--settings",
        metavar="FILE",
        default=os.environ.get(SETTINGS_ENVIRONMENT),
        help="store preferences (window geometry, recent files) in this INI file instead of "
        f"the user's settings; the environment variable {SETTINGS_ENVIRONMENT} does the same",
    )
    parser.add_argument(
        "--quit-after-ms",
        type=int,
        metavar="MS",
        help="close the window after MS milliseconds without asking to save (for smoke tests)",
    )
    parser.add_argument(
        "--debug", action="store_true", help="log the lifecycle of background work to stderr"
    )
    return parser.parse_known_args(argv)


def make_settings(path: str | None):
    """Return the ``QSettings`` for preferences: an INI file at ``path``, or the user's."""
    from PySide6 import QtCore

    if path:
        return QtCore.QSettings(path, QtCore.QSettings.Format.IniFormat)
    return QtCore.QSettings()


def display_problem(environment=None, platform: str = sys.platform) -> str | None:
    """Return why no window can open here, or None; Qt itself aborts the process instead."""
    environment = os.environ if environment is None else environment
    if not platform.startswith("linux") or environment.get("QT_QPA_PLATFORM"):
        return None
    if environment.get("DISPLAY") or environment.get("WAYLAND_DISPLAY"):
        return None
    return (
        "no display: the app needs a desktop session (DISPLAY or WAYLAND_DISPLAY is unset). "
        "Run it on a desktop, or use the dflows command, which needs none."
    )


def main(argv: list[str] | None = None) -> int:
    """Start the app; returns the exit status."""
    args, qt_arguments = parse_arguments(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING,
        format="%(asctime)s %(name)s %(levelname)s [%(threadName)s] %(message)s",
    )

    problem = display_problem()
    if problem:
        print(f"dflows-explorer: {problem}", file=sys.stderr)
        return 1

    from PySide6 import QtCore, QtWidgets

    from .views import configure_pyqtgraph

    configure_pyqtgraph()
    app = QtWidgets.QApplication.instance() or QtWidgets.QApplication([sys.argv[0], *qt_arguments])
    app.setOrganizationName("dflows")
    app.setApplicationName("dflows-explorer")

    from .icons import app_icon
    from .main_window import MainWindow

    app.setWindowIcon(app_icon())
    window = MainWindow(make_settings(args.settings))
    window.show()
    if args.file:
        window.open_model(args.file)
    if args.quit_after_ms is not None:
        QtCore.QTimer.singleShot(args.quit_after_ms, window.close_without_prompt)
    log.debug("event loop starting")
    status = app.exec()

    if window.job_running():
        # A step at a large K can outlast the close. The window is gone and its settings
        # are saved. A running QThread cannot be destroyed safely, so leave without cleanup.
        log.warning("training step still running at exit; exiting without waiting for it")
        logging.shutdown()
        os._exit(status)
    return status
