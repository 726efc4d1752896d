"""Grid views and the loss curve: the one place where arrays enter pyqtgraph.

Axis convention, shared by every view and by the target painter: a ``K x K`` array ``a``
is drawn with ``a[row, column]`` covering ``column <= x < column + 1`` and
``row <= y < row + 1``, and the y axis points down, so row 0 is the top row everywhere.
``cell_at`` inverts exactly this mapping.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import pyqtgraph as pg
from PySide6 import QtCore, QtWidgets

from .render import colormap, display_values, levels_for


def configure_pyqtgraph() -> None:
    """Set the pyqtgraph options the views rely on; call before any item is created.

    pyqtgraph reads image arrays column-major by default, which would show every grid
    transposed.
    """
    pg.setConfigOptions(imageAxisOrder="row-major", antialias=True)


# Views are created only after this module is imported, so setting the options here
# covers every entry point (the app, the tests, a Python shell).
configure_pyqtgraph()


def format_probability(value: float) -> str:
    """Format a probability compactly, keeping small values readable."""
    if value == 0:
        return "0"
    return f"{value:.4g}"


def title_label(text: str) -> QtWidgets.QLabel:
    """Return a bold view title that never widens its view (long titles are clipped)."""
    label = QtWidgets.QLabel(text)
    label.setStyleSheet("font-weight: bold")
    label.setToolTip(text)
    label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
    return label


def readout_label() -> QtWidgets.QLabel:
    """Return a hover readout label whose changing text never resizes the layout."""
    label = QtWidgets.QLabel(" ")
    label.setSizePolicy(QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred)
    label.setTextInteractionFlags(QtCore.Qt.TextInteractionFlag.TextSelectableByMouse)
    return label


class ColourScale:
    """Colour levels shared by all views of one kind, such as every probability view.

    Levels run from 0 (or ``LOG_DECADES`` below the maximum in log mode) to the largest value
    shown in any of the views, so equal colours mean equal values across the kind.
    """

    def __init__(self, name: str, log: bool = False) -> None:
        self.name = name
        self.log = log
        self.views: list[GridView] = []
        self.levels = levels_for(0.0, log)
        self._drawn_log = log

    def add_view(self, view: "GridView") -> None:
        self.views.append(view)

    def set_log(self, log: bool) -> None:
        self.log = bool(log)
        self.refresh()

    def refresh(self) -> None:
        """Recompute the levels from the views' current arrays and redraw the views that
        changed (all of them when the levels changed)."""
        maxima = [float(view.values.max()) for view in self.views if view.values is not None]
        levels = levels_for(max(maxima, default=0.0), self.log)
        changed = levels != self.levels or self.log != self._drawn_log
        self.levels, self._drawn_log = levels, self.log
        for view in self.views:
            if changed or view.stale:
                view.redraw()


class GridImage(pg.ImageItem):
    """An image item that only exists to carry the grid axis convention."""


class GridView(QtWidgets.QWidget):
    """A titled image of a ``K x K`` array with a colour bar and a hover readout.

    ``value_name`` labels the value in the readout, for example ``"p"`` or ``"q"``.
    ``describe`` may replace the readout's value text for a cell.
    """

    def __init__(
        self,
        title: str,
        value_name: str,
        scale: ColourScale,
        image: pg.ImageItem | None = None,
        describe: Callable[[int, int, float], str] | None = None,
        parent: QtWidgets.QWidget | None = None,
    ) -> None:
        super().__init__(parent)
        self.value_name = value_name
        self.scale = scale
        self.describe = describe
        self.values: np.ndarray | None = None
        self.stale = True  # the image does not show ``values`` yet

        self.title_label = title_label(title)
        self.graphics = pg.GraphicsLayoutWidget()
        self.graphics.setMinimumSize(110, 100)
        self.graphics.ci.setContentsMargins(2, 2, 2, 2)
        self.plot = self.graphics.addPlot()
        self.plot.setAspectLocked(True)
        self.plot.invertY(True)
        self.plot.hideButtons()
        cache = QtWidgets.QGraphicsItem.CacheMode.DeviceCoordinateCache
        for axis in ("left", "bottom"):
            self.plot.getAxis(axis).setStyle(tickLength=-4)
            # Axes redraw their text at every repaint of the image otherwise, which took
            # more time than the image itself.
            self.plot.getAxis(axis).setCacheMode(cache)
        self.image = image if image is not None else GridImage()
        self.plot.addItem(self.image)

        self.colour_bar = pg.ColorBarItem(
            colorMap=colormap(), interactive=False, width=10, colorMapMenu=False
        )
        self.colour_bar.setImageItem(self.image, insert_in=self.plot)
        self.colour_bar.axis.setCacheMode(cache)
        # The bar's axis keeps the width of its first labels and drops wider ones later, such
        # as "0.0002" after "0.001". A fixed width fits six digits after the point.
        self.colour_bar.axis.setWidth(54)
        self._bar_shows_log = False

        self.hover_label = readout_label()
        self.footer = QtWidgets.QVBoxLayout()
        self.footer.setContentsMargins(0, 0, 0, 0)

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(1)
        layout.addWidget(self.title_label)
        layout.addWidget(self.graphics, 1)
        layout.addLayout(self.footer)
        layout.addWidget(self.hover_label)

        self._hover_cell: tuple[int, int] | None = None
        self.graphics.scene().sigMouseMoved.connect(self._mouse_moved)
        scale.add_view(self)

    # Geometry.

    @property
    def view_box(self) -> pg.ViewBox:
        return self.plot.getViewBox()

    def cell_at(self, scene_position: QtCore.QPointF) -> tuple[int, int] | None:
        """Return the ``(row, column)`` under a scene position, or None outside the grid."""
        if self.values is None:
            return None
        point = self.view_box.mapSceneToView(scene_position)
        row, column = math.floor(point.y()), math.floor(point.x())
        rows, columns = self.values.shape
        if 0 <= row < rows and 0 <= column < columns:
            return row, column
        return None

    def scene_position(self, row: float, column: float) -> QtCore.QPointF:
        """Return the scene position of view coordinates ``(row, column)``, for example a
        cell centre ``(r + 0.5, c + 0.5)``."""
        return self.view_box.mapViewToScene(QtCore.QPointF(column, row))

    # Data.

    def set_title(self, title: str) -> None:
        self.title_label.setText(title)

    def set_values(self, values: np.ndarray | None, refresh: bool = True) -> None:
        """Show a new array; with ``refresh=False`` the caller refreshes the scale later."""
        old_shape = None if self.values is None else self.values.shape
        self.values = None if values is None else np.asarray(values, dtype=np.float64)
        self.stale = True
        if self.values is not None and self.values.shape != old_shape:
            rows, columns = self.values.shape
            self.view_box.setRange(QtCore.QRectF(0, 0, columns, rows), padding=0.02)
        if refresh:
            self.scale.refresh()
        self._update_hover()

    def redraw(self) -> None:
        """Draw the current array with the scale's levels and log setting."""
        low, high = self.scale.levels
        if self.values is None:
            self.image.clear()
        else:
            shown = display_values(self.values, self.scale.log, low)
            self.image.setImage(shown, autoLevels=False, levels=(low, high))
        if tuple(self.colour_bar.levels()) != (low, high):
            self.colour_bar.setLevels((low, high))
        if self.scale.log != self._bar_shows_log:
            # In log mode the bar's ticks are exponents, so name them.
            if self.scale.log:
                self.colour_bar.axis.setLabel("log10")
            else:
                self.colour_bar.axis.showLabel(False)
            self._bar_shows_log = self.scale.log
        self.stale = False

    # Hover readout.

    def describe_cell(self, row: int, column: int) -> str:
        """Return the readout text for one cell of the current array."""
        value = float(self.values[row, column])
        if self.describe is not None:
            text = self.describe(row, column, value)
        else:
            text = f"{self.value_name} = {format_probability(value)}"
        return f"row {row}, column {column}: {text}"

    def _mouse_moved(self, scene_position: QtCore.QPointF) -> None:
        self._hover_cell = self.cell_at(scene_position)
        self._update_hover()

    def _update_hover(self) -> None:
        cell = self._hover_cell
        if cell is None or self.values is None or cell[0] >= len(self.values):
            self.hover_label.setText(" ")
            return
        self.hover_label.setText(self.describe_cell(*cell))

    def leaveEvent(self, event) -> None:  # noqa: N802 (Qt override)
        self._hover_cell = None
        self._update_hover()
        super().leaveEvent(event)


class LayerView(GridView):
    """The target pushed through the first ``i`` coupling layers, with a slider for ``i``."""

    layer_changed = QtCore.Signal(int)

    def __init__(self, scale: ColourScale, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__("After layer 0 of 0", "p", scale, parent=parent)
        self.layers: list[np.ndarray] = []
        self.slider = QtWidgets.QSlider(QtCore.Qt.Orientation.Horizontal)
        self.slider.setRange(0, 0)
        self.slider.setToolTip(
            "Number of coupling layers applied to the target: 0 is the data, the last is the latent"
        )
        self.slider.valueChanged.connect(self._show_layer)
        self.footer.addWidget(self.slider)

    def set_layers(self, layers: list[np.ndarray] | None, refresh: bool = True) -> None:
        """Store the target after each layer; keeps the slider position when it still fits."""
        self.layers = list(layers or [])
        last = max(0, len(self.layers) - 1)
        self.slider.blockSignals(True)
        at_end = self.slider.value() == self.slider.maximum()
        self.slider.setRange(0, last)
        if at_end or self.slider.value() > last:
            self.slider.setValue(last)
        self.slider.blockSignals(False)
        self._show_layer(self.slider.value(), refresh)

    def _show_layer(self, index: int, refresh: bool = True) -> None:
        last = max(0, len(self.layers) - 1)
        self.set_title(f"After layer {index} of {last}")
        values = self.layers[index] if self.layers else None
        self.set_values(values, refresh)
        self.layer_changed.emit(index)


class LossView(QtWidgets.QWidget):
    """The training loss and the exact NLL against the step, with two reference lines.

    The entropy ``H(p)`` is the lowest NLL any model can reach. The best factorized NLL is
    the NLL of the product of the two marginals, which a flow should beat.
    """

    def __init__(self, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.title_label = title_label("Loss and exact NLL (nats)")
        self.plot_widget = pg.PlotWidget()
        self.plot_widget.setMinimumHeight(120)
        plot = self.plot_widget.getPlotItem()
        plot.showGrid(x=True, y=True, alpha=0.2)
        plot.setLabel("bottom", "step")
        plot.setLabel("left", "nats")
        plot.addLegend(offset=(-10, 10))
        plot.setDownsampling(auto=True, mode="peak")
        plot.setClipToView(True)
        self.loss_curve = plot.plot(name="training loss", pen=pg.mkPen((120, 160, 220), width=1))
        self.nll_curve = plot.plot(
            name="exact NLL", pen=pg.mkPen((255, 170, 40), width=2), symbol=None
        )
        dash = QtCore.Qt.PenStyle.DashLine
        self.entropy_curve = plot.plot(
            name="target entropy H(p)", pen=pg.mkPen((90, 210, 120), width=1, style=dash)
        )
        self.factorized_curve = plot.plot(
            name="best factorized", pen=pg.mkPen((220, 90, 200), width=1, style=dash)
        )
        self.hover_label = readout_label()
        self.history: dict[str, np.ndarray] = {}
        self.entropy = math.nan
        self.best_factorized = math.nan

        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(2, 2, 2, 2)
        layout.setSpacing(1)
        layout.addWidget(self.title_label)
        layout.addWidget(self.plot_widget, 1)
        layout.addWidget(self.hover_label)
        self.plot_widget.scene().sigMouseMoved.connect(self._mouse_moved)

    def set_history(
        self, history: dict[str, np.ndarray], entropy: float, best_factorized: float
    ) -> None:
        """Draw a history dict as stored by the trainer (``step``, ``loss``, ``eval_step``,
        ``nll``) and the two reference lines, all in nats."""
        self.history = {key: np.asarray(value, dtype=np.float64) for key, value in history.items()}
        self.entropy, self.best_factorized = entropy, best_factorized
        steps = self.history.get("step", np.empty(0))
        loss = self.history.get("loss", np.empty(0))
        eval_steps = self.history.get("eval_step", np.empty(0))
        nll = self.history.get("nll", np.empty(0))
        self.loss_curve.setData(steps, loss)
        self.nll_curve.setData(eval_steps, nll)

        first = 0.0
        last = max(
            float(steps[-1]) if len(steps) else 0.0,
            float(eval_steps[-1]) if len(eval_steps) else 0.0,
            1.0,
        )
        span = np.array([first, last])
        for curve, value in ((self.entropy_curve, entropy), (self.factorized_curve, best_factorized)):
            if math.isfinite(value):
                curve.setData(span, np.array([value, value]))
            else:
                curve.setData([], [])

    def _mouse_moved(self, scene_position: QtCore.QPointF) -> None:
        box = self.plot_widget.getPlotItem().getViewBox()
        if not box.sceneBoundingRect().contains(scene_position):
            self.hover_label.setText(" ")
            return
        step = box.mapSceneToView(scene_position).x()
        parts = [f"step {max(0, round(step))}"]
        for key_steps, key_values, label in (("step", "loss", "loss"), ("eval_step", "nll", "NLL")):
            steps = self.history.get(key_steps)
            values = self.history.get(key_values)
            if steps is None or values is None or not len(steps):
                continue
            index = int(np.clip(np.searchsorted(steps, step), 0, len(steps) - 1))
            parts.append(f"{label} at step {int(steps[index])} = {values[index]:.4f}")
        if math.isfinite(self.entropy):
            parts.append(f"H(p) = {self.entropy:.4f}")
        if math.isfinite(self.best_factorized):
            parts.append(f"best factorized = {self.best_factorized:.4f}")
        self.hover_label.setText(", ".join(parts))
