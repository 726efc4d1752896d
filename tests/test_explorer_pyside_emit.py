"""Regression test: PySide6-Essentials 6.12.0 crashes CPython 3.11 on repeated signal emits.

With that release every signal emitted from Python drops one reference to ``True``. After
a few hundred emits the interpreter aborts with ``Fatal Python error: bool_dealloc``. The
app emits signals and pyqtgraph redraws images continuously, so it would crash within
seconds. pyproject.toml excludes that release on Python < 3.12.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

EMITS = 5000
IMAGE_UPDATES = 3000

SCRIPT = textwrap.dedent(
    f"""
    import numpy as np
    import pyqtgraph as pg
    from PySide6 import QtCore, QtWidgets

    class Sender(QtCore.QObject):
        flag = QtCore.Signal(bool)

    app = QtWidgets.QApplication([])
    received = []
    sender = Sender()
    sender.flag.connect(received.append)
    for index in range({EMITS}):
        sender.flag.emit(index % 2 == 0)
    assert len(received) == {EMITS}, len(received)

    pg.setConfigOptions(imageAxisOrder="row-major")
    widget = pg.GraphicsLayoutWidget()
    plot = widget.addPlot()
    image = pg.ImageItem()
    plot.addItem(image)
    widget.resize(200, 200)
    widget.show()
    generator = np.random.default_rng(0)
    for index in range({IMAGE_UPDATES}):
        image.setImage(generator.random((16, 9)), autoLevels=index % 2 == 0)
        if index % 100 == 0:
            app.processEvents()
    print("done")
    """
)


def test_signal_emits_and_image_updates_do_not_crash():
    environment = dict(os.environ, QT_QPA_PLATFORM="offscreen")
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT], env=environment, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "done" in result.stdout


@pytest.mark.skipif(sys.version_info[:2] != (3, 11), reason="the crash affects CPython 3.11 only")
def test_pyside6_is_not_the_crashing_release():
    from importlib.metadata import PackageNotFoundError, version

    import PySide6

    assert PySide6.__version__ != "6.12.0"
    try:
        assert version("PySide6-Essentials") != "6.12.0"
    except PackageNotFoundError:
        pass  # PySide6 installed another way; its own version was checked above
