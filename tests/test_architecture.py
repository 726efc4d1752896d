"""Checks that the dflows library stays free of any GUI toolkit.

The library must import on machines without Qt (servers, CI), so no module under dflows/
may import PySide6, pyqtgraph or another Qt binding, directly or through its imports.
"""

import ast
import json
import subprocess
import sys
from pathlib import Path

import dflows

PACKAGE_DIR = Path(dflows.__file__).resolve().parent

GUI_MODULES = {
    "PySide6", "PySide2", "PyQt6", "PyQt5", "PyQt4", "shiboken6", "shiboken2",
    "qtpy", "pyqtgraph", "sip",
}


def top_level(name):
    return name.split(".")[0]


def imported_names(tree):
    """Yield every module name that a parsed file imports, including dynamic imports."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            yield node.module
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            function = node.func
            function_name = function.attr if isinstance(function, ast.Attribute) else getattr(function, "id", "")
            if function_name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                yield node.args[0].value


def test_scanner_finds_gui_imports():
    source = (
        "import PySide6.QtCore\n"
        "from pyqtgraph import PlotWidget\n"
        "import importlib\n"
        "importlib.import_module('PyQt6.QtGui')\n"
        "__import__('qtpy')\n"
        "from . import flow\n"
    )

    names = list(imported_names(ast.parse(source)))

    assert [top_level(name) for name in names if top_level(name) in GUI_MODULES] == [
        "PySide6", "pyqtgraph", "PyQt6", "qtpy",
    ]


def test_package_has_sources():
    assert len(list(PACKAGE_DIR.rglob("*.py"))) >= 10


def test_sources_import_no_gui_toolkit():
    offenders = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for name in imported_names(tree):
            if top_level(name) in GUI_MODULES:
                offenders.append(f"{path.relative_to(PACKAGE_DIR.parent)} imports {name}")

    assert offenders == []


def test_import_loads_no_gui_toolkit():
    # A fresh interpreter imports dflows and every module in it, then lists what is loaded.
    script = (
        "import importlib, json, pkgutil, sys\n"
        "import dflows\n"
        "for module in pkgutil.walk_packages(dflows.__path__, 'dflows.'):\n"
        "    importlib.import_module(module.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    completed = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd=PACKAGE_DIR.parent,
    )

    assert completed.returncode == 0, completed.stderr
    loaded = json.loads(completed.stdout.strip().splitlines()[-1])
    assert "dflows.flow" in loaded
    assert sorted(name for name in loaded if top_level(name) in GUI_MODULES) == []
