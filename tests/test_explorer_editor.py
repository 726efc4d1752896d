"""Target editor: strokes, undo, mouse painting after zoom and pan, orientation, K changes."""

from __future__ import annotations

import numpy as np
import pytest
from PySide6 import QtCore, QtGui
from PySide6.QtTest import QTest

import dflows
from dflows.targets import resample
from explorer.target_editor import TargetCanvas
from explorer.views import ColourScale, GridView

LEFT = QtCore.Qt.MouseButton.LeftButton


# TargetCanvas, without Qt.


def test_single_cell_dab_changes_only_that_cell():
    weights = np.full((10, 10), 0.2)
    weights[0, 0] = 1.0  # weights are scaled to a maximum of 1
    canvas = TargetCanvas(weights)
    before = canvas.weights.copy()
    canvas.begin_stroke(erase=False, diameter=1, strength=0.5)
    canvas.stroke_to(3, 7)
    assert canvas.end_stroke()

    changed = np.argwhere(canvas.weights != before)
    assert changed.tolist() == [[3, 7]]
    assert canvas.weights[3, 7] == pytest.approx(0.7)


def test_fast_stroke_leaves_no_gaps():
    canvas = TargetCanvas(np.zeros((50, 50)))
    canvas.begin_stroke(erase=False, diameter=1, strength=1.0)
    canvas.stroke_to(5, 2)
    canvas.stroke_to(5, 45)  # one jump across 43 cells
    canvas.end_stroke()

    assert np.all(canvas.weights[5, 2:46] == 1.0)
    assert np.all(canvas.weights[4] < 0.01)
    assert np.all(canvas.weights[6] < 0.01)


def test_stroke_result_independent_of_event_density():
    sparse = TargetCanvas(np.zeros((30, 30)))
    dense = TargetCanvas(np.zeros((30, 30)))
    for canvas, points in ((sparse, [(3, 3), (20, 25)]), (dense, [(3, 3), (8, 9), (14, 17), (20, 25)])):
        canvas.begin_stroke(erase=False, diameter=5, strength=0.6)
        for point in points:
            canvas.stroke_to(*point)
        canvas.end_stroke()
    # The dense path bends slightly, so compare what both must paint: the straight line.
    assert sparse.weights[3, 3] == pytest.approx(0.6)
    assert dense.weights[20, 25] == pytest.approx(0.6)
    assert sparse.weights.max() == pytest.approx(0.6)
    assert dense.weights.max() == pytest.approx(0.6)


def test_eraser_undo_redo_clear_fill():
    canvas = TargetCanvas(np.ones((6, 6)))
    canvas.begin_stroke(erase=True, diameter=1, strength=1.0)
    canvas.stroke_to(2, 4)
    canvas.end_stroke()
    assert canvas.weights[2, 4] == 0.0

    assert canvas.undo()
    assert canvas.weights[2, 4] == 1.0
    assert canvas.redo()
    assert canvas.weights[2, 4] == 0.0

    canvas.clear()
    assert canvas.is_empty()
    with pytest.raises(dflows.TargetError, match="all zero"):
        canvas.target()
    canvas.fill(0.3)
    assert np.all(canvas.weights == 0.3)
    assert canvas.target().sum() == pytest.approx(1.0)
    assert canvas.undo()
    assert canvas.is_empty()


def test_stroke_without_change_is_not_recorded():
    canvas = TargetCanvas(np.ones((4, 4)))
    canvas.begin_stroke(erase=False, diameter=1, strength=1.0)
    canvas.stroke_to(1, 1)  # already at the maximum weight
    assert not canvas.end_stroke()
    assert not canvas.can_undo


# Mouse painting in the window.


def widget_point(view: GridView, row: float, column: float) -> QtCore.QPoint:
    """Map view coordinates (row, column) to a point in the view's graphics viewport."""
    scene = view.scene_position(row, column)
    return view.graphics.mapFromScene(scene)


def settle(qtbot, window):
    window.show()
    qtbot.waitExposed(window)
    QtCore.QCoreApplication.processEvents()


@pytest.mark.parametrize("zoom", [False, True])
def test_mouse_click_paints_the_cell_under_it(qtbot, window, zoom):
    settle(qtbot, window)
    editor = window.editor
    editor.size_spin.setValue(1)
    editor.strength_spin.setValue(50)
    view = editor.view
    if zoom:
        view.view_box.scaleBy((0.6, 0.6))
        view.view_box.translateBy((1.3, -1.7))
        QtCore.QCoreApplication.processEvents()
    before = editor.canvas.weights.copy()

    row, column = 2, 9  # lopsided: a transposed mapping would hit (9, 2)
    point = widget_point(view, row + 0.5, column + 0.5)
    assert view.graphics.viewport().rect().contains(point)
    QTest.mouseClick(view.graphics.viewport(), LEFT, QtCore.Qt.KeyboardModifier.NoModifier, point)

    changed = np.argwhere(editor.canvas.weights != before)
    assert changed.tolist() == [[row, column]]


def test_mouse_drag_paints_a_gapless_line(qtbot, window):
    settle(qtbot, window)
    editor = window.editor
    editor.canvas.clear()
    editor.size_spin.setValue(1)
    editor.strength_spin.setValue(100)
    viewport = editor.view.graphics.viewport()
    start = widget_point(editor.view, 1.5, 1.5)
    end = widget_point(editor.view, 1.5, 10.5)

    QTest.mousePress(viewport, LEFT, QtCore.Qt.KeyboardModifier.NoModifier, start)
    # Two moves only: the first starts the drag, the second jumps nine cells at once.
    middle = QtCore.QPoint(start.x() + 12, start.y())
    for point in (middle, end):
        event = QtGui.QMouseEvent(
            QtCore.QEvent.Type.MouseMove, QtCore.QPointF(point), QtCore.QPointF(viewport.mapToGlobal(point)),
            QtCore.Qt.MouseButton.NoButton, LEFT, QtCore.Qt.KeyboardModifier.NoModifier,
        )
        QtCore.QCoreApplication.sendEvent(viewport, event)
    QTest.mouseRelease(viewport, LEFT, QtCore.Qt.KeyboardModifier.NoModifier, end)

    weights = editor.canvas.weights
    assert np.all(weights[1, 1:11] == 1.0)
    assert weights.sum() == pytest.approx(10.0)
    assert editor.canvas.can_undo


def test_undo_redo_actions_and_shortcuts(window):
    editor = window.editor
    assert editor.undo_action.shortcut() == QtGui.QKeySequence("Ctrl+Z")
    assert editor.redo_action.shortcut() == QtGui.QKeySequence("Ctrl+Shift+Z")
    before = editor.canvas.weights.copy()
    editor.clear_action.trigger()
    assert editor.canvas.is_empty()
    editor.undo_action.trigger()
    np.testing.assert_array_equal(editor.canvas.weights, before)
    editor.redo_action.trigger()
    assert editor.canvas.is_empty()


# Orientation: every view, the hover readout and the painter agree on row 0.


def test_views_draw_row_zero_on_top(qtbot):
    view = GridView("test", "p", ColourScale("test"))
    qtbot.addWidget(view)
    view.resize(400, 400)
    view.show()
    qtbot.waitExposed(view)
    values = np.zeros((16, 16))
    values[2, 12] = 1.0  # top right, lopsided
    view.set_values(values)
    QtCore.QCoreApplication.processEvents()

    # The image item contains the array row-major, unchanged.
    np.testing.assert_array_equal(view.image.image, values)
    # The brightest pixels on screen lie in the cell that cell_at names (2, 12).
    pixels = view.graphics.grab().toImage().convertToFormat(QtGui.QImage.Format.Format_RGB32)
    array = np.frombuffer(pixels.constBits(), np.uint8).reshape(pixels.height(), pixels.bytesPerLine() // 4, 4)
    brightness = array[..., :3].astype(int).sum(axis=2)
    # Ignore the colour bar, which is drawn right of the plot.
    plot_right = int(view.graphics.mapFromScene(view.view_box.sceneBoundingRect().topRight()).x())
    brightness[:, plot_right:] = 0
    ys, xs = np.nonzero(brightness >= brightness.max() - 30)
    centre = QtCore.QPoint(int(round(xs.mean())), int(round(ys.mean())))
    assert view.cell_at(view.graphics.mapToScene(centre)) == (2, 12)

    # The hover readout names the same cell and its value.
    view._mouse_moved(view.scene_position(2.5, 12.5))
    assert view.hover_label.text().startswith("row 2, column 12: p = 1")


def test_every_view_maps_cells_the_same_way(qtbot, window):
    settle(qtbot, window)
    for key in ("target", "data", "model", "generated", "latent", "base", "layers"):
        view = window.views[key]
        for row, column in ((0, 0), (1, 10), (11, 3)):
            assert view.cell_at(view.scene_position(row + 0.5, column + 0.5)) == (row, column), key


# Changing K.


def test_changing_k_regenerates_a_preset(window):
    window.panel.flow_editors["vocab_size"].widget.setValue(20)
    np.testing.assert_allclose(window.editor.probabilities(), dflows.preset("ring8", 20))
    assert window.editor.size == 20


def test_changing_k_resamples_a_painting(window):
    editor = window.editor
    painted = np.zeros((12, 12))
    painted[1:4, 6:11] = 1.0  # an off-centre block
    editor.set_target(painted)
    old = editor.probabilities()

    window.panel.flow_editors["vocab_size"].widget.setValue(30)
    new = editor.probabilities()

    assert new.shape == (30, 30)
    assert new.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(new, resample(old, 30), atol=1e-12)
    # The centre of mass, as a fraction of the grid, moves by less than one new cell.
    rows, columns = np.mgrid[0:30, 0:30]
    old_rows, old_columns = np.mgrid[0:12, 0:12]
    tolerance = 1 / 30
    assert (new * (rows + 0.5) / 30).sum() == pytest.approx((old * (old_rows + 0.5) / 12).sum(), abs=tolerance)
    assert (new * (columns + 0.5) / 30).sum() == pytest.approx(
        (old * (old_columns + 0.5) / 12).sum(), abs=tolerance
    )


def test_changing_k_twice_does_not_blur(window):
    editor = window.editor
    painted = np.zeros((12, 12))
    painted[5, 5] = 1.0
    editor.set_target(painted)
    window.panel.flow_editors["vocab_size"].widget.setValue(7)
    window.panel.flow_editors["vocab_size"].widget.setValue(12)
    np.testing.assert_allclose(editor.probabilities(), painted)
