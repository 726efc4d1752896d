"""The target editor: paint a distribution on the K x K grid.

``TargetCanvas`` contains the editable weights and the undo history and needs no Qt.
``TargetEditor`` is the widget: a ``GridView`` whose image takes brush strokes, and a
row of tools.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtGui, QtWidgets

import dflows
from dflows.targets import resample, validate_target

from .views import ColourScale, GridView, format_probability

MAX_UNDO = 50
MAX_BRUSH = 64


@dataclass(frozen=True)
class TargetSource:
    """The origin of the weights, so that a change of K can redraw them without blurring.

    A preset is regenerated at the new K. Anything else is resampled from ``array``, the
    weights as they were after the last edit, at that edit's K.
    """

    preset: str | None = None
    array: np.ndarray | None = None

    def at_size(self, size: int) -> np.ndarray:
        """Return the weights of this source on a ``size x size`` grid, scaled to max 1."""
        if self.preset is not None:
            weights = dflows.preset(self.preset, size)
        elif self.array is None or self.array.shape == (size, size):
            weights = np.zeros((size, size)) if self.array is None else self.array.copy()
        else:
            weights = resample(self.array, size)
        return scale_to_unit(weights)


def scale_to_unit(weights: np.ndarray) -> np.ndarray:
    """Return ``weights`` divided by their maximum (all zeros stay zeros)."""
    weights = np.asarray(weights, dtype=np.float64)
    top = float(weights.max(initial=0.0))
    return weights / top if top > 0 else np.zeros_like(weights)


def segment_distances(
    rows: np.ndarray, columns: np.ndarray, start: tuple[float, float], end: tuple[float, float]
) -> np.ndarray:
    """Return the distance from each point ``(rows, columns)`` to the segment start-end."""
    r0, c0 = start
    dr, dc = end[0] - r0, end[1] - c0
    length2 = dr * dr + dc * dc
    if length2 == 0:
        t = np.zeros_like(rows, dtype=np.float64)
    else:
        t = np.clip(((rows - r0) * dr + (columns - c0) * dc) / length2, 0.0, 1.0)
    return np.hypot(rows - (r0 + t * dr), columns - (c0 + t * dc))


class TargetCanvas:
    """Non-negative weights on a ``K x K`` grid, normalised to a target on request.

    Weights live in ``[0, 1]``. A stroke paints into a mask that takes the maximum of the
    brush profile along the path, so a stroke's result does not depend on how often the
    mouse reported positions, and a fast drag leaves no gaps. Every edit can be undone.
    """

    def __init__(self, weights: np.ndarray, source: TargetSource | None = None) -> None:
        self.weights = scale_to_unit(weights)
        self.source = source or TargetSource(array=self.weights.copy())
        self._undo: list[tuple[np.ndarray, TargetSource]] = []
        self._redo: list[tuple[np.ndarray, TargetSource]] = []
        self._stroke: dict | None = None

    @property
    def size(self) -> int:
        return self.weights.shape[0]

    def probabilities(self) -> np.ndarray:
        """Return the weights normalised to sum 1, or all zeros when nothing is painted."""
        total = self.weights.sum()
        return self.weights / total if total > 0 else np.zeros_like(self.weights)

    def target(self) -> np.ndarray:
        """Return the normalised target; raises ``TargetError`` when it is all zero."""
        return validate_target(self.weights, name="the painted target")

    def is_empty(self) -> bool:
        return not self.weights.any()

    # Edits that replace the whole grid.

    def _record(self) -> None:
        self._undo.append((self.weights.copy(), self.source))
        del self._undo[:-MAX_UNDO]
        self._redo.clear()

    def replace(self, weights: np.ndarray, source: TargetSource | None = None) -> None:
        """Replace the grid (any K) with new weights; undoable."""
        self._record()
        self.weights = scale_to_unit(weights)
        self.source = source or TargetSource(array=self.weights.copy())

    def clear(self) -> None:
        self.replace(np.zeros_like(self.weights))

    def fill(self, level: float) -> None:
        """Set every cell to ``level`` (in ``(0, 1]``): a uniform target."""
        self._record()
        self.weights = np.full_like(self.weights, float(level))
        self.source = TargetSource(array=self.weights.copy())

    def resize(self, size: int) -> None:
        """Redraw the target on a ``size x size`` grid from its source, keeping its shape.

        A change of K is a setting, not an edit, so it is not recorded for undo. Undoing an
        earlier edit redraws that state at the current K.
        """
        if size != self.size:
            self.weights = self.source.at_size(size)

    # Strokes.

    def begin_stroke(self, erase: bool, diameter: float, strength: float) -> None:
        """Start a brush (or eraser) stroke of ``diameter`` cells and ``strength`` in (0, 1]."""
        self._stroke = {
            "start": self.weights.copy(),
            "mask": np.zeros_like(self.weights),
            "erase": bool(erase),
            "radius": max(0.5, float(diameter) / 2.0),
            "strength": float(np.clip(strength, 0.0, 1.0)),
            "last": None,
        }

    @property
    def stroking(self) -> bool:
        return self._stroke is not None

    def stroke_to(self, row: int, column: int) -> None:
        """Paint the segment from the stroke's last cell to ``(row, column)``.

        Cells outside the grid are allowed, so a stroke may leave and re-enter the grid.
        """
        stroke = self._stroke
        if stroke is None:
            raise RuntimeError("stroke_to needs begin_stroke first")
        end = (int(row), int(column))
        start = stroke["last"] if stroke["last"] is not None else end
        stroke["last"] = end

        radius = stroke["radius"]
        reach = int(math.ceil(radius + 0.5))
        size = self.size
        top = max(0, min(start[0], end[0]) - reach)
        bottom = min(size, max(start[0], end[0]) + reach + 1)
        left = max(0, min(start[1], end[1]) - reach)
        right = min(size, max(start[1], end[1]) + reach + 1)
        if top >= bottom or left >= right:
            return
        rows, columns = np.mgrid[top:bottom, left:right]
        distance = segment_distances(rows, columns, start, end)
        # Full strength within the radius, fading to zero over one more cell: a single-cell
        # brush (radius 0.5) paints exactly the cell under the cursor.
        # Rounding keeps cells on the path at exactly full strength despite float error.
        profile = np.clip(np.round(radius + 0.5 - distance, 9), 0.0, 1.0)
        region = stroke["mask"][top:bottom, left:right]
        np.maximum(region, profile, out=region)

        change = stroke["strength"] * region
        base = stroke["start"][top:bottom, left:right]
        painted = base - change if stroke["erase"] else base + change
        self.weights[top:bottom, left:right] = np.clip(painted, 0.0, 1.0)

    def end_stroke(self) -> bool:
        """Finish the stroke; returns whether it changed any weight (and so can be undone)."""
        stroke, self._stroke = self._stroke, None
        if stroke is None or np.array_equal(stroke["start"], self.weights):
            return False
        self._undo.append((stroke["start"], self.source))
        del self._undo[:-MAX_UNDO]
        self._redo.clear()
        self.source = TargetSource(array=self.weights.copy())
        return True

    # Undo.

    @property
    def can_undo(self) -> bool:
        return bool(self._undo)

    @property
    def can_redo(self) -> bool:
        return bool(self._redo)

    def _restore(self, entry: tuple[np.ndarray, TargetSource]) -> None:
        weights, source = entry
        size = self.size
        self.source = source
        self.weights = weights.copy() if weights.shape == (size, size) else source.at_size(size)

    def undo(self) -> bool:
        if not self._undo:
            return False
        self._redo.append((self.weights.copy(), self.source))
        self._restore(self._undo.pop())
        return True

    def redo(self) -> bool:
        if not self._redo:
            return False
        self._undo.append((self.weights.copy(), self.source))
        self._restore(self._redo.pop())
        return True


class PaintImage(pg.ImageItem):
    """The editor's image: left-button clicks and drags paint, other buttons pan and zoom."""

    def __init__(self, editor: "TargetEditor") -> None:
        super().__init__()
        self.editor = editor

    def hoverEvent(self, event) -> None:  # noqa: N802 (pyqtgraph override)
        # Claiming left drags here is what keeps the view box from panning on them.
        if self.editor.editable and not event.isExit():
            event.acceptDrags(QtCore.Qt.MouseButton.LeftButton)
            event.acceptClicks(QtCore.Qt.MouseButton.LeftButton)

    def mouseClickEvent(self, event) -> None:  # noqa: N802
        if event.button() != QtCore.Qt.MouseButton.LeftButton or not self.editor.editable:
            event.ignore()
            return
        event.accept()
        self.editor.begin_stroke()
        self.editor.stroke_to(event.pos())
        self.editor.end_stroke()

    def mouseDragEvent(self, event) -> None:  # noqa: N802
        if event.button() != QtCore.Qt.MouseButton.LeftButton or not self.editor.editable:
            event.ignore()
            return
        event.accept()
        if event.isStart():
            self.editor.begin_stroke()
            # The drag starts a few pixels after the press; paint from the press position.
            self.editor.stroke_to(event.buttonDownPos())
        if self.editor.canvas.stroking:
            self.editor.stroke_to(event.pos())
        if event.isFinish():
            self.editor.end_stroke()


class TargetEditor(QtWidgets.QWidget):
    """The painter for the target p(x), with brush, eraser, clear, fill and undo.

    ``edited`` is emitted after every finished change of the target (a stroke, clear, fill,
    undo, redo, a new target or a new K), not for each mouse move within a stroke.
    """

    edited = QtCore.Signal()

    def __init__(self, scale: ColourScale, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.canvas = TargetCanvas(np.ones((2, 2)))
        self.editable = True

        self.image = PaintImage(self)
        self.view = GridView("Target p(x)", "p", scale, image=self.image)
        self.view.describe = self._describe

        self.brush_button = QtWidgets.QToolButton(text="Brush", checkable=True, checked=True)
        self.brush_button.setToolTip("Left button paints probability; middle button pans, wheel zooms")
        self.eraser_button = QtWidgets.QToolButton(text="Eraser", checkable=True)
        self.eraser_button.setToolTip("Left button removes probability")
        tools = QtWidgets.QButtonGroup(self)
        tools.setExclusive(True)
        tools.addButton(self.brush_button)
        tools.addButton(self.eraser_button)

        self.size_spin = QtWidgets.QSpinBox(minimum=1, maximum=MAX_BRUSH, value=3, prefix="size ")
        self.size_spin.setToolTip("Brush diameter, in grid cells")
        self.strength_spin = QtWidgets.QSpinBox(
            minimum=1, maximum=100, value=50, prefix="strength ", suffix=" %"
        )
        self.strength_spin.setToolTip(
            "How much one stroke adds (or erases), as a share of the largest cell weight; "
            "Fill sets every cell to this level"
        )

        self.undo_action = QtGui.QAction("Undo", self, shortcut=QtGui.QKeySequence("Ctrl+Z"))
        self.redo_action = QtGui.QAction("Redo", self, shortcut=QtGui.QKeySequence("Ctrl+Shift+Z"))
        self.clear_action = QtGui.QAction("Clear", self)
        self.clear_action.setToolTip("Set every cell to zero")
        self.fill_action = QtGui.QAction("Fill", self)
        self.fill_action.setToolTip("Set every cell to the brush strength: a uniform target")
        self.undo_action.triggered.connect(self.undo)
        self.redo_action.triggered.connect(self.redo)
        self.clear_action.triggered.connect(self.clear)
        self.fill_action.triggered.connect(self.fill)

        # Two short rows of tools keep the editor narrow enough for small screens.
        brush_row = QtWidgets.QHBoxLayout()
        brush_row.setContentsMargins(0, 0, 0, 0)
        for widget in (self.brush_button, self.eraser_button, self.size_spin, self.strength_spin):
            brush_row.addWidget(widget)
        brush_row.addStretch(1)
        edit_row = QtWidgets.QHBoxLayout()
        edit_row.setContentsMargins(0, 0, 0, 0)
        for action in (self.clear_action, self.fill_action, self.undo_action, self.redo_action):
            button = QtWidgets.QToolButton()
            button.setDefaultAction(action)
            edit_row.addWidget(button)
        edit_row.addStretch(1)
        self.tool_widgets = [
            self.brush_button, self.eraser_button, self.size_spin, self.strength_spin
        ]

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(2)
        layout.addLayout(brush_row)
        layout.addLayout(edit_row)
        layout.addWidget(self.view, 1)
        self._update_actions()

    # State.

    @property
    def size(self) -> int:
        return self.canvas.size

    def probabilities(self) -> np.ndarray:
        return self.canvas.probabilities()

    def set_editable(self, editable: bool) -> None:
        """Allow or forbid edits; a stroke in progress is finished first."""
        if not editable and self.canvas.stroking:
            self.end_stroke()
        self.editable = bool(editable)
        for widget in self.tool_widgets:
            widget.setEnabled(self.editable)
        self.clear_action.setEnabled(self.editable)
        self.fill_action.setEnabled(self.editable)
        self._update_actions()

    def _update_actions(self) -> None:
        self.undo_action.setEnabled(self.editable and self.canvas.can_undo)
        self.redo_action.setEnabled(self.editable and self.canvas.can_redo)

    def _show(self) -> None:
        self.view.set_values(self.canvas.probabilities())
        self._update_actions()

    def _changed(self) -> None:
        self._show()
        self.edited.emit()

    def _describe(self, row: int, column: int, value: float) -> str:
        return f"p = {format_probability(value)}"

    # Whole-grid edits.

    def set_target(self, weights: np.ndarray, preset: str | None = None, record: bool = True) -> None:
        """Show new weights (any K, any scale); ``preset`` names their preset, if any.

        With ``record=False`` the undo history starts afresh, as for a new document.
        """
        source = TargetSource(preset=preset) if preset else None
        if record:
            self.canvas.replace(weights, source)
        else:
            self.canvas = TargetCanvas(weights, source)
        self._changed()

    def resize(self, size: int) -> None:
        """Redraw the target on a ``size x size`` grid, keeping its shape."""
        if size != self.canvas.size:
            self.canvas.resize(size)
            self._changed()

    def clear(self) -> None:
        if self.editable:
            self.canvas.clear()
            self._changed()

    def fill(self) -> None:
        if self.editable:
            self.canvas.fill(self.strength_spin.value() / 100.0)
            self._changed()

    def undo(self) -> None:
        if self.editable and self.canvas.undo():
            self._changed()

    def redo(self) -> None:
        if self.editable and self.canvas.redo():
            self._changed()

    # Strokes, in view coordinates (x = column, y = row).

    def begin_stroke(self) -> None:
        self.canvas.begin_stroke(
            erase=self.eraser_button.isChecked(),
            diameter=self.size_spin.value(),
            strength=self.strength_spin.value() / 100.0,
        )

    def stroke_to(self, position: QtCore.QPointF) -> None:
        """Extend the stroke to a point in image coordinates; the cell under it is painted."""
        self.canvas.stroke_to(math.floor(position.y()), math.floor(position.x()))
        self.view.set_values(self.canvas.probabilities())

    def end_stroke(self) -> None:
        if self.canvas.end_stroke():
            self._changed()
