"""The main window: target editor, settings, views, training controls and files.

Run states: IDLE means no run, and every setting can be edited. RUNNING means a job trains
in its thread. PAUSED keeps the run's trainer for Resume, and the settings stay locked.
STOPPING means a stop was requested and the job has not finished its step yet.

While a job runs, the job owns the model; this window reads only the snapshots it sends.
Between jobs the window may use the model in the GUI thread, for previews and files.

Every dialog goes through one small method (``show_error``, ``confirm``,
``ask_save_changes``, ``choose_open_file``, ``choose_save_file``, ``ask_sample_count``)
so tests can replace it and no dialog ever blocks a test.
"""

from __future__ import annotations

import collections
import enum
import logging
import math
import time
from pathlib import Path

import numpy as np
import torch
from PySide6 import QtCore, QtGui, QtWidgets

import dflows
from dflows.config import ConfigError, FlowConfig, TrainConfig, recommended_configs
from dflows.modelfile import ModelFileError
from dflows.targets import PRESETS, TargetError, load_image, load_npy, save_target
from dflows.trainer import Snapshot, create_flow

from . import files
from .icons import app_icon, preset_icon
from .settings_panel import SettingsPanel
from .snapshots import snapshot_of
from .target_editor import TargetEditor
from .views import ColourScale, GridView, LayerView, LossView
from .worker import JobResult, TrainingJob, start_job

log = logging.getLogger("explorer")

DEFAULT_PRESET = "ring8"
DEFAULT_GRID = 91
MAX_RECENT_FILES = 8
DEFAULT_SAMPLE_COUNT = 10000
# How long closing the window waits for a running step to end. A step at large K can take
# seconds, and app.main() exits anyway once the window is closed.
CLOSE_WAIT_MS = 1500
PREVIEW_DELAY_MS = 120
# Torch intra-op threads for work in the GUI thread (previews, sample export). Timing
# snapshot_of at K = 91 on a 2-core CPU machine gave 10 ms with one thread, 444 ms with two.
GUI_TORCH_THREADS = 1


class RunState(enum.Enum):
    IDLE = "idle"
    RUNNING = "training"
    PAUSED = "paused"
    STOPPING = "stopping"


class MainWindow(QtWidgets.QMainWindow):
    """The dflows explorer window; ``settings`` stores preferences between launches.

    ``snapshot_shown(Snapshot)`` is emitted after a training snapshot is drawn, and
    ``job_finished(JobResult)`` after a job has ended and the run state is updated.
    """

    snapshot_shown = QtCore.Signal(object)
    job_finished = QtCore.Signal(object)

    def __init__(self, settings: QtCore.QSettings, parent: QtWidgets.QWidget | None = None) -> None:
        super().__init__(parent)
        self.settings = settings
        self.setWindowIcon(app_icon())
        self.close_wait_ms = CLOSE_WAIT_MS

        self.state = RunState.IDLE
        self.model: dflows.DiscreteFlow | None = None
        self.trainer = None
        self.job: TrainingJob | None = None
        self.thread: QtCore.QThread | None = None
        self.job_is_single_step = False
        # Steps left in the paused run; None when it runs until stopped.
        self.remaining_steps: int | None = None
        self.until_stopped = False
        self.stop_intent: str | None = None
        self.pending_live: dict[str, float] = {}
        self.display_job_id: int | None = None
        self.last_snapshot: Snapshot | None = None
        self.path: Path | None = None
        self.dirty = False
        self.update_times: collections.deque[float] = collections.deque(maxlen=60)

        flow, train = recommended_configs(DEFAULT_PRESET, DEFAULT_GRID)
        self.scales = {
            "probability": ColourScale("probability"),
            "samples": ColourScale("samples"),
            "latent": ColourScale("latent"),
        }
        self.panel = SettingsPanel(flow, train)
        self.editor = TargetEditor(self.scales["probability"])
        self._build_views()
        self._build_actions()
        self._build_menus()
        self._build_layout()
        self._build_status_bar()

        self.preview_timer = QtCore.QTimer(self, singleShot=True, interval=PREVIEW_DELAY_MS)
        self.preview_timer.timeout.connect(self.refresh_preview)
        self.editor.edited.connect(self._target_edited)
        self.panel.grid_size_changed.connect(self._grid_size_changed)
        self.panel.model_changed.connect(self._model_settings_changed)
        self.panel.train_changed.connect(self._train_settings_changed)
        self.panel.live_changed.connect(self._live_setting_changed)
        self.panel.samples_changed.connect(lambda _n: self.schedule_preview())

        self._restore_preferences()
        self.new_document(ask=False)

    # Construction.

    def _build_views(self) -> None:
        samples = self.scales["samples"]
        self.data_view = GridView(
            "Data: samples of p", "frequency", samples, describe=self._describe_histogram
        )
        self.data_view.setToolTip("Histogram of samples drawn from the target p(x)")

        self.density_view = GridView("Model q(x)", "q", self.scales["probability"])
        self.density_view.setToolTip("The model's exact probability of every cell")

        self.generated_view = GridView(
            "Generated samples", "frequency", samples, describe=self._describe_histogram
        )
        self.generated_view.setToolTip("Histogram of inverse(z) for z drawn from the fitted base")

        self.latent_view = GridView("Latent f(x), x ~ p", "p", self.scales["latent"])
        self.latent_view.setToolTip(
            "The target pushed through every layer (exact): the flow should make it look "
            "like the fitted base"
        )
        self.base_view = GridView("Fitted base", "p_base", self.scales["latent"])
        self.base_view.setToolTip("The base distribution: a product of two learned marginals")

        self.layer_view = LayerView(self.scales["probability"])
        self.loss_view = LossView()
        self.views: dict[str, QtWidgets.QWidget] = {
            "target": self.editor.view,
            "data": self.data_view,
            "model": self.density_view,
            "generated": self.generated_view,
            "latent": self.latent_view,
            "base": self.base_view,
            "layers": self.layer_view,
            "loss": self.loss_view,
        }
        self.samples_shown = 0

    def _action(self, text: str, slot, shortcut: str | None = None, tip: str | None = None) -> QtGui.QAction:
        action = QtGui.QAction(text, self)
        if shortcut:
            action.setShortcut(QtGui.QKeySequence(shortcut))
        if tip:
            action.setToolTip(tip)
            action.setStatusTip(tip)
        action.triggered.connect(lambda _checked=False: slot())
        return action

    def _build_actions(self) -> None:
        self.new_action = self._action(
            "&New", self.new_document, "Ctrl+N", "Start again on ring8 with the recommended settings"
        )
        self.open_action = self._action("&Open…", self.open_model, "Ctrl+O", "Open a .dflow model file")
        self.save_action = self._action(
            "&Save", self.save, "Ctrl+S", "Save the model, target, settings and history"
        )
        self.save_as_action = self._action("Save &As…", self.save_as, "Ctrl+Shift+S")
        self.load_target_action = self._action(
            "Load Target…",
            self.load_target_file,
            tip="Load a PNG or JPEG image (bright is probable) or a .npy array",
        )
        self.load_inverted_action = self._action(
            "Load Target Image, Dark Is Probable…", lambda: self.load_target_file(invert=True)
        )
        self.save_target_action = self._action(
            "Save Target…", self.save_target_file, tip="Save the target as .npy or PNG"
        )
        self.export_samples_action = self._action(
            "Export Samples…",
            self.export_samples,
            tip="Draw samples from the model and save them as .npy or .csv",
        )
        self.export_window_action = self._action("Export Window as PNG…", self.export_window)
        self.quit_action = self._action("&Quit", self.close, "Ctrl+Q")

        self.train_action = self._action("Train", self.train, tip="Start training (Space)")
        self.pause_action = self._action(
            "Pause", self.pause_or_resume, tip="Pause or resume training (Space)"
        )
        self.stop_action = self._action("Stop", self.stop, tip="End the run; the trained weights are kept")
        self.reset_action = self._action(
            "Reset", self.reset, tip="Discard the trained weights and the history"
        )
        self.step_action = self._action("Single Step", self.single_step, tip="Make one optimizer step")
        self.toggle_action = self._action("Train or Pause", self.toggle_training, "Space")
        self.toggle_action.setShortcutContext(QtCore.Qt.ShortcutContext.WindowShortcut)
        self.addAction(self.toggle_action)

        self.log_action = QtGui.QAction("Log Scale", self, checkable=True)
        self.log_action.setShortcut(QtGui.QKeySequence("Ctrl+L"))
        self.log_action.setToolTip("Show every grid view on a log scale (6 decades)")
        self.log_action.toggled.connect(self.set_log_scale)
        self.fit_action = self._action(
            "Fit Views", self.fit_views, "Ctrl+0", "Zoom every view to the whole grid"
        )
        self.recommended_action = self._action(
            "Use Recommended Settings",
            self.use_recommended_settings,
            tip="Replace the model and training settings with the ones dflows recommends for "
            "this preset (or for any target, once it is painted over) at the current K",
        )

        self.preset_actions: dict[str, QtGui.QAction] = {}
        for name, spec in PRESETS.items():
            action = QtGui.QAction(preset_icon(name), name, self)
            action.setToolTip(spec.description)
            action.setStatusTip(spec.description)
            action.triggered.connect(lambda _checked=False, preset=name: self.load_preset(preset))
            self.preset_actions[name] = action

    def _build_menus(self) -> None:
        bar = self.menuBar()
        file_menu = bar.addMenu("&File")
        file_menu.addActions([self.new_action, self.open_action])
        self.recent_menu = file_menu.addMenu("Open &Recent")
        file_menu.addActions([self.save_action, self.save_as_action])
        file_menu.addSeparator()
        file_menu.addActions([self.load_target_action, self.load_inverted_action, self.save_target_action])
        file_menu.addSeparator()
        file_menu.addAction(self.export_samples_action)
        export_menu = file_menu.addMenu("Export View as PNG")
        for key, widget in self.views.items():
            title = self._view_title(widget)
            export_menu.addAction(title, lambda key=key: self.export_view(key))
        file_menu.addAction(self.export_window_action)
        file_menu.addSeparator()
        file_menu.addAction(self.quit_action)

        edit_menu = bar.addMenu("&Edit")
        edit_menu.addActions([self.editor.undo_action, self.editor.redo_action])
        edit_menu.addSeparator()
        edit_menu.addActions([self.editor.clear_action, self.editor.fill_action])
        self.presets_menu = bar.addMenu("&Presets")
        self.presets_menu.addActions(list(self.preset_actions.values()))

        train_menu = bar.addMenu("&Train")
        train_menu.addActions(
            [self.train_action, self.pause_action, self.stop_action, self.reset_action, self.step_action]
        )
        train_menu.addSeparator()
        train_menu.addAction(self.recommended_action)
        view_menu = bar.addMenu("&View")
        view_menu.addActions([self.log_action, self.fit_action])

        toolbar = self.addToolBar("Training")
        toolbar.setObjectName("training-toolbar")
        toolbar.addActions(
            [self.train_action, self.pause_action, self.stop_action, self.reset_action, self.step_action]
        )
        toolbar.addSeparator()
        presets_button = QtWidgets.QToolButton()
        presets_button.setText("Presets")
        presets_button.setMenu(self.presets_menu)
        presets_button.setPopupMode(QtWidgets.QToolButton.ToolButtonPopupMode.InstantPopup)
        toolbar.addWidget(presets_button)
        toolbar.addSeparator()
        toolbar.addAction(self.log_action)
        toolbar.addAction(self.fit_action)

    @staticmethod
    def _view_title(widget: QtWidgets.QWidget) -> str:
        return widget.title_label.text() if hasattr(widget, "title_label") else "view"

    def _build_layout(self) -> None:
        central = QtWidgets.QWidget()
        grid = QtWidgets.QGridLayout(central)
        grid.setContentsMargins(4, 4, 4, 4)
        grid.setSpacing(4)
        grid.addWidget(self.editor, 0, 0, 2, 1)
        grid.addWidget(self.data_view, 0, 1)
        grid.addWidget(self.density_view, 0, 2)
        grid.addWidget(self.generated_view, 0, 3)
        grid.addWidget(self.latent_view, 1, 1)
        grid.addWidget(self.base_view, 1, 2)
        grid.addWidget(self.layer_view, 1, 3)
        grid.addWidget(self.loss_view, 2, 0, 1, 4)
        grid.setColumnStretch(0, 3)
        for column in (1, 2, 3):
            grid.setColumnStretch(column, 2)
        grid.setRowStretch(0, 3)
        grid.setRowStretch(1, 3)
        grid.setRowStretch(2, 2)
        self.setCentralWidget(central)

        scroll = QtWidgets.QScrollArea()
        scroll.setWidget(self.panel)
        scroll.setWidgetResizable(True)
        scroll.setHorizontalScrollBarPolicy(QtCore.Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        scroll.setMinimumWidth(280)
        dock = QtWidgets.QDockWidget("Settings")
        dock.setObjectName("settings-dock")
        dock.setFeatures(QtWidgets.QDockWidget.DockWidgetFeature.DockWidgetMovable)
        dock.setWidget(scroll)
        self.addDockWidget(QtCore.Qt.DockWidgetArea.LeftDockWidgetArea, dock)

    def _build_status_bar(self) -> None:
        status = self.statusBar()
        self.state_label = QtWidgets.QLabel()
        self.metrics_label = QtWidgets.QLabel()
        # Long metrics text is clipped rather than setting the window's minimum width.
        self.metrics_label.setSizePolicy(
            QtWidgets.QSizePolicy.Policy.Ignored, QtWidgets.QSizePolicy.Policy.Preferred
        )
        self.metrics_label.setMinimumWidth(200)
        alignment = QtCore.Qt.AlignmentFlag
        self.metrics_label.setAlignment(alignment.AlignRight | alignment.AlignVCenter)
        self.rate_label = QtWidgets.QLabel()
        status.addPermanentWidget(self.metrics_label, 1)
        status.addPermanentWidget(self.rate_label)
        status.addPermanentWidget(self.state_label)

    # Dialogs: tests replace these methods.

    def show_error(self, title: str, message: str) -> None:
        """Show an error in a message box (and in the status bar and the log)."""
        log.warning("%s: %s", title, message)
        self.statusBar().showMessage(f"{title}: {message.splitlines()[0]}", 15000)
        QtWidgets.QMessageBox.critical(self, title, message)

    def confirm(self, title: str, message: str) -> bool:
        answer = QtWidgets.QMessageBox.question(self, title, message)
        return answer == QtWidgets.QMessageBox.StandardButton.Yes

    def ask_save_changes(self, message: str) -> str:
        """Ask whether to save; returns "save", "discard" or "cancel"."""
        buttons = QtWidgets.QMessageBox.StandardButton
        answer = QtWidgets.QMessageBox.question(
            self, "Unsaved changes", message, buttons.Save | buttons.Discard | buttons.Cancel, buttons.Save
        )
        return {buttons.Save: "save", buttons.Discard: "discard"}.get(answer, "cancel")

    def choose_open_file(self, caption: str, filters: str) -> str | None:
        path, _selected = QtWidgets.QFileDialog.getOpenFileName(self, caption, self._last_folder(), filters)
        return path or None

    def choose_save_file(self, caption: str, filters: str, suggested: str) -> tuple[str, str] | None:
        """Return ``(path, selected filter)``, or None when cancelled."""
        start = str(Path(self._last_folder()) / suggested)
        path, selected = QtWidgets.QFileDialog.getSaveFileName(self, caption, start, filters)
        return (path, selected) if path else None

    def ask_sample_count(self) -> int | None:
        count, ok = QtWidgets.QInputDialog.getInt(
            self, "Export samples", "Number of samples:", DEFAULT_SAMPLE_COUNT, 1, 10_000_000
        )
        return count if ok else None

    # Preferences.

    def _restore_preferences(self) -> None:
        settings = self.settings
        geometry = settings.value("window/geometry")
        if geometry is not None:
            self.restoreGeometry(geometry)
        else:
            self.resize(1500, 950)
        state = settings.value("window/state")
        if state is not None:
            self.restoreState(state)
        self.log_action.setChecked(settings.value("view/log_scale", False, type=bool))
        self.editor.size_spin.setValue(
            settings.value("editor/brush_size", self.editor.size_spin.value(), type=int)
        )
        self.editor.strength_spin.setValue(
            settings.value("editor/brush_strength", self.editor.strength_spin.value(), type=int)
        )
        self.panel.set_samples(settings.value("view/samples", self.panel.samples(), type=int))
        self._rebuild_recent_menu()

    def save_preferences(self) -> None:
        settings = self.settings
        settings.setValue("window/geometry", self.saveGeometry())
        settings.setValue("window/state", self.saveState())
        settings.setValue("view/log_scale", self.log_action.isChecked())
        settings.setValue("editor/brush_size", self.editor.size_spin.value())
        settings.setValue("editor/brush_strength", self.editor.strength_spin.value())
        settings.setValue("view/samples", self.panel.samples())
        settings.sync()

    def _last_folder(self) -> str:
        return str(self.settings.value("files/last_folder", str(Path.home())))

    def _remember_folder(self, path: Path) -> None:
        self.settings.setValue("files/last_folder", str(Path(path).resolve().parent))

    def recent_files(self) -> list[str]:
        value = self.settings.value("files/recent", [])
        if isinstance(value, str):
            value = [value]
        return [str(item) for item in (value or [])]

    def _add_recent(self, path: Path) -> None:
        text = str(Path(path).resolve())
        recent = [item for item in self.recent_files() if item != text]
        self.settings.setValue("files/recent", [text, *recent][:MAX_RECENT_FILES])
        self._rebuild_recent_menu()

    def _rebuild_recent_menu(self) -> None:
        self.recent_menu.clear()
        recent = self.recent_files()
        for text in recent:
            self.recent_menu.addAction(text, lambda path=text: self.open_model(path))
        self.recent_menu.setEnabled(bool(recent))

    # Document state.

    def _model_trained(self) -> bool:
        return self.model is not None and bool(self.model.history.get("step"))

    def set_dirty(self, dirty: bool = True) -> None:
        self.dirty = bool(dirty)
        self._update_title()

    def _update_title(self) -> None:
        name = self.path.name if self.path else "untitled"
        self.setWindowTitle(f"{name}[*] — dflows explorer")
        self.setWindowModified(self.dirty)

    def _maybe_save_changes(self, action: str) -> bool:
        """Return True when the caller may go on and lose the current work."""
        if not self.dirty:
            return True
        name = self.path.name if self.path else "the untitled model"
        answer = self.ask_save_changes(f"Save the changes to {name} before you {action}?")
        if answer == "save":
            return self.save()
        return answer == "discard"

    def _configs(self) -> tuple[FlowConfig, TrainConfig] | None:
        """Return the panel's settings, or None after showing what is invalid."""
        try:
            return self.panel.flow_config(), self.panel.train_config()
        except ConfigError as error:
            self.show_error("Invalid setting", f"{error}.\nCorrect the setting marked in red and try again.")
            return None

    def new_document(self, ask: bool = True) -> None:
        """Start again on ring8 at K = 91 with the recommended settings."""
        if ask and not self._maybe_save_changes("start a new model"):
            return
        self._halt_and_wait("stop")
        flow, train = recommended_configs(DEFAULT_PRESET, DEFAULT_GRID)
        self.panel.set_configs(flow, train)
        self.editor.set_target(
            dflows.preset(DEFAULT_PRESET, flow.vocab_size), preset=DEFAULT_PRESET, record=False
        )
        self._discard_model()
        self.path = None
        self.set_dirty(False)
        self.refresh_preview()
        self._update_controls()

    def _discard_model(self) -> None:
        self.model = None
        self.trainer = None
        self.remaining_steps = None
        self.pending_live.clear()
        self.display_job_id = None
        self.last_snapshot = None

    # Target edits and settings changes (only possible while idle).

    def _target_edited(self) -> None:
        self.set_dirty()
        self.schedule_preview()

    def load_preset(self, name: str) -> None:
        if self.state is not RunState.IDLE:
            return
        self.editor.set_target(dflows.preset(name, self.editor.size), preset=name)
        self.statusBar().showMessage(f"Preset {name}: {PRESETS[name].description}", 5000)

    def _confirm_discard_trained(self, change: str) -> bool:
        if not self._model_trained():
            return True
        if self.dirty and not self.confirm(
            "Discard the trained model?",
            f"{change} needs a new model, so the trained weights and the history will be "
            "discarded. Save the model first if you want to keep them. Discard them now?",
        ):
            return False
        self._discard_model()
        self.set_dirty()
        return True

    def use_recommended_settings(self) -> None:
        """Show dflows' recommended settings for the current preset (if any) and K."""
        if self.state is not RunState.IDLE:
            return
        preset = self.editor.canvas.source.preset
        flow, train = recommended_configs(preset, self.editor.size)
        if self.model is not None and flow != self.model.config:
            if not self._confirm_discard_trained("Using the recommended settings"):
                return
            self._discard_model()
        notes = self.panel.set_configs(flow, train)
        self.set_dirty()
        self.schedule_preview()
        target = f"preset {preset}" if preset else "a painted target"
        message = f"Recommended settings for {target} at K = {flow.vocab_size}"
        self.statusBar().showMessage("; ".join([message, *notes]), 8000)

    def _grid_size_changed(self, size: int) -> None:
        if not self._confirm_discard_trained(f"Changing the grid size to K = {size}"):
            self.panel.set_grid_size(self.editor.size)
            return
        self._discard_model()
        self.editor.resize(size)

    def _model_settings_changed(self) -> None:
        if self.model is not None and self._model_trained():
            configs = self._configs_quiet()
            if configs is not None and configs[0] == self.model.config:
                return
            if not self._confirm_discard_trained("Changing the model settings"):
                self.panel.set_flow_config(self.model.config)
                return
        self._discard_model()
        self.set_dirty()
        self.schedule_preview()

    def _train_settings_changed(self) -> None:
        self.set_dirty()
        if not self._model_trained():
            # The seed sets the initial weights of an untrained model.
            self._discard_model()
            self.schedule_preview()

    def _configs_quiet(self) -> tuple[FlowConfig, TrainConfig] | None:
        try:
            return self.panel.flow_config(), self.panel.train_config()
        except ConfigError:
            return None

    def _live_setting_changed(self, name: str, value: float) -> None:
        if self.job is not None:
            self.job.set_live(name, value)
        elif self.trainer is not None:
            self.pending_live[name] = value
        self.set_dirty()

    # Previews between runs.

    def schedule_preview(self) -> None:
        self.preview_timer.start()

    def _ensure_model(self, flow: FlowConfig, train: TrainConfig) -> dflows.DiscreteFlow:
        if self.model is None or self.model.config != flow:
            self.model = create_flow(flow, train.seed)
        return self.model

    def refresh_preview(self) -> None:
        """Redraw the views from the current model (untrained if need be) and target."""
        self.preview_timer.stop()
        if self.state is not RunState.IDLE:
            return
        configs = self._configs_quiet()
        if configs is None:
            return
        flow, train = configs
        if self.editor.size != flow.vocab_size:
            return
        # No job runs while idle, so this cannot change the threads of a training run,
        # and Trainer.run sets its own count when the next run starts.
        torch.set_num_threads(GUI_TORCH_THREADS)
        model = self._ensure_model(flow, train)
        target = self.editor.probabilities()
        self.display_job_id = None
        self.show_snapshot(snapshot_of(model, target, self.panel.samples(), train.seed))

    # Views.

    def _describe_histogram(self, row: int, column: int, value: float) -> str:
        count = round(value * self.samples_shown)
        return f"frequency {value:.4g} ({count} of {self.samples_shown} samples)"

    def set_log_scale(self, log_scale: bool) -> None:
        for scale in self.scales.values():
            scale.set_log(log_scale)

    def fit_views(self) -> None:
        for widget in self.views.values():
            if isinstance(widget, GridView) and widget.values is not None:
                rows, columns = widget.values.shape
                widget.view_box.setRange(QtCore.QRectF(0, 0, columns, rows), padding=0.02)
        self.loss_view.plot_widget.getPlotItem().enableAutoRange()

    @staticmethod
    def _frequencies(histogram: np.ndarray | None) -> np.ndarray | None:
        if histogram is None:
            return None
        total = histogram.sum()
        return histogram / total if total > 0 else histogram

    def show_snapshot(self, snapshot: Snapshot) -> None:
        """Draw a snapshot in every view and the status bar."""
        self.last_snapshot = snapshot
        self.density_view.set_values(snapshot.density, refresh=False)
        self.layer_view.set_layers(snapshot.layers, refresh=False)
        self.latent_view.set_values(snapshot.latent, refresh=False)
        self.base_view.set_values(snapshot.base, refresh=False)
        if snapshot.data_histogram is not None:
            self.samples_shown = int(round(snapshot.data_histogram.sum())) or self.panel.samples()
            self.data_view.set_values(self._frequencies(snapshot.data_histogram), refresh=False)
            self.generated_view.set_values(self._frequencies(snapshot.generated_histogram), refresh=False)
        for scale in self.scales.values():
            scale.refresh()
        metrics = snapshot.metrics
        self.loss_view.set_history(snapshot.history, metrics.entropy, metrics.best_factorized)
        self._show_metrics(snapshot)

    def _show_metrics(self, snapshot: Snapshot) -> None:
        metrics = snapshot.metrics
        if math.isfinite(metrics.nll):
            text = (
                f"step {snapshot.step}  |  {snapshot.steps_per_second:.1f} steps/s  |  "
                f"NLL {metrics.nll:.4f} nats ({metrics.nll_bits:.4f} bits)  |  "
                f"KL {metrics.kl:.4f} nats ({metrics.kl_bits:.4f} bits)  |  device {snapshot.device}"
            )
        else:
            text = f"step {snapshot.step}  |  nothing painted  |  device {snapshot.device}"
        self.metrics_label.setText(text)

    def view_updates_per_second(self) -> float:
        """Return the rate of snapshot redraws over the last 2 seconds of training."""
        now = time.monotonic()
        recent = [t for t in self.update_times if now - t <= 2.0]
        if len(recent) < 2:
            return 0.0
        return (len(recent) - 1) / max(recent[-1] - recent[0], 1e-9)

    # Training controls.

    def _update_controls(self) -> None:
        state = self.state
        idle, running, paused = state is RunState.IDLE, state is RunState.RUNNING, state is RunState.PAUSED
        self.train_action.setEnabled(idle)
        self.pause_action.setEnabled(running or paused)
        self.pause_action.setText("Resume" if paused else "Pause")
        self.stop_action.setEnabled(running or paused)
        self.reset_action.setEnabled(state is not RunState.STOPPING)
        self.step_action.setEnabled(idle or paused)
        self.panel.set_locked(not idle)
        self.editor.set_editable(idle)
        for action in (
            *self.preset_actions.values(),
            self.load_target_action,
            self.load_inverted_action,
            self.recommended_action,
        ):
            action.setEnabled(idle)
        self.presets_menu.setEnabled(idle)
        self.state_label.setText(state.value)

    def _set_state(self, state: RunState) -> None:
        if state is not self.state:
            log.debug("state %s -> %s", self.state.value, state.value)
        self.state = state
        self._update_controls()

    def toggle_training(self) -> None:
        """Space: train when idle, pause when training, resume when paused."""
        if self.state is RunState.IDLE:
            self.train()
        elif self.state is RunState.RUNNING:
            self.pause()
        elif self.state is RunState.PAUSED:
            self.resume()

    def train(self) -> None:
        """Start a run with the panel's settings on the current target."""
        if self.state is RunState.PAUSED:
            self.resume()
        elif self.state is RunState.IDLE:
            self._start_new_run(single_step=False)

    def single_step(self) -> None:
        if self.state is RunState.IDLE:
            self._start_new_run(single_step=True)
        elif self.state is RunState.PAUSED:
            job = TrainingJob(1, self.panel.samples(), trainer=self.trainer, live=self._take_live())
            self._start_job(job, single_step=True)

    def _take_live(self) -> dict[str, float]:
        live, self.pending_live = self.pending_live, {}
        return live

    def _start_new_run(self, single_step: bool) -> None:
        try:
            target = self.editor.canvas.target()
        except TargetError:
            self.show_error(
                "Nothing to train on",
                "The target is all zero. Paint at least one cell or choose a preset, then train again.",
            )
            return
        configs = self._configs()
        if configs is None:
            return
        flow, train = configs
        if not self._model_trained():
            # An untrained model is rebuilt so its weights follow the current seed.
            self.model = None
        model = self._ensure_model(flow, train)
        self.pending_live.clear()
        self.remaining_steps = None
        self.until_stopped = train.steps == 0
        steps = 1 if single_step else None
        job = TrainingJob(steps, self.panel.samples(), model=model, target=target, config=train)
        self._start_job(job, single_step)

    def _start_job(self, job: TrainingJob, single_step: bool) -> None:
        if self.job is not None:
            raise RuntimeError("a training job is already running")
        self.job = job
        self.job_is_single_step = single_step
        self.stop_intent = None
        self.display_job_id = job.job_id
        self.update_times.clear()
        job.snapshot_ready.connect(self._snapshot_ready)
        job.finished.connect(self._job_finished)
        self._set_state(RunState.RUNNING)
        self.thread = start_job(job)

    def resume(self) -> None:
        if self.state is not RunState.PAUSED or self.trainer is None:
            return
        steps = 0 if self.until_stopped else self.remaining_steps
        job = TrainingJob(steps, self.panel.samples(), trainer=self.trainer, live=self._take_live())
        self._start_job(job, single_step=False)

    def pause(self) -> None:
        self._request_stop("pause")

    def pause_or_resume(self) -> None:
        if self.state is RunState.RUNNING:
            self.pause()
        elif self.state is RunState.PAUSED:
            self.resume()

    def stop(self) -> None:
        if self.state is RunState.PAUSED:
            self.trainer = None
            self.remaining_steps = None
            self._set_state(RunState.IDLE)
            self.statusBar().showMessage("Stopped; the trained weights are kept", 5000)
        else:
            self._request_stop("stop")

    def reset(self) -> None:
        """Discard the trained weights and the history, after a confirmation if they are unsaved."""
        if self.state is RunState.RUNNING:
            self._request_stop("reset")
            return
        if self.state is RunState.STOPPING:
            return
        if self._model_trained() and self.dirty and not self.confirm(
            "Reset the model?", "Reset discards the trained weights and the history. Continue?"
        ):
            return
        was_trained = self._model_trained()
        self._discard_model()
        self._set_state(RunState.IDLE)
        if was_trained:
            self.set_dirty()
        self.refresh_preview()

    def _request_stop(self, intent: str) -> None:
        if self.state is not RunState.RUNNING or self.job is None:
            return
        log.debug("job %d: stop requested (%s)", self.job.job_id, intent)
        self.stop_intent = intent
        self.job.request_stop()
        self._set_state(RunState.STOPPING)

    def _halt_and_wait(self, intent: str, timeout_ms: int | None = None) -> bool:
        """Stop a running job and wait for it; returns False if it is still running.

        ``intent`` is "pause" (keep the trainer), "stop" or "close".
        """
        if self.job is None:
            if intent in ("stop", "close") and self.state is RunState.PAUSED:
                self.trainer = None
                self._set_state(RunState.IDLE)
            return True
        job, thread = self.job, self.thread
        log.debug("job %d: halting (%s)", job.job_id, intent)
        self.stop_intent = intent
        job.request_stop()
        finished = thread.wait() if timeout_ms is None else thread.wait(timeout_ms)
        if not finished:
            log.warning("job %d: still running after %d ms; leaving it to finish", job.job_id, timeout_ms)
            return False
        self._finish_job(job.result or JobResult(reason="failed", message="the job ended without a result"))
        return True

    @QtCore.Slot(int, object)
    def _snapshot_ready(self, job_id: int, snapshot: Snapshot) -> None:
        if job_id == self.display_job_id:
            self.show_snapshot(snapshot)
            self.update_times.append(time.monotonic())
            self.rate_label.setText(f"views {self.view_updates_per_second():.0f}/s")
            self.snapshot_shown.emit(snapshot)
        if self.job is not None and self.job.job_id == job_id:
            self.job.acknowledge()

    @QtCore.Slot(int, object)
    def _job_finished(self, job_id: int, result: JobResult) -> None:
        if self.job is None or self.job.job_id != job_id:
            return
        self._finish_job(result)

    def _finish_job(self, result: JobResult) -> None:
        """Take the model back from a finished job and choose the next state."""
        if self.thread is not None:
            self.thread.wait()
        self.job, self.thread = None, None
        self.trainer = result.trainer
        if result.steps:
            self.set_dirty()
        if result.run_length is not None:
            # Only the worker can compute a new run's length (Trainer.total_steps), so it reports it.
            self.remaining_steps = max(0, result.run_length - result.steps) if result.run_length else None
        elif self.remaining_steps is not None:
            self.remaining_steps = max(0, self.remaining_steps - result.steps)
        intent, self.stop_intent = self.stop_intent, None
        run_done = not self.until_stopped and self.remaining_steps == 0

        if result.reason == "failed":
            self.trainer = None
            self._set_state(RunState.IDLE)
            self.show_error("Training failed", result.message)
        elif result.reason == "diverged":
            self._set_state(RunState.PAUSED)
            self.show_error("Training diverged", result.message)
        elif intent in ("stop", "close") or (run_done and intent != "pause"):
            self.trainer = None
            self.remaining_steps = None
            self._set_state(RunState.IDLE)
            if result.reason == "completed" and intent is None:
                message = f"Finished: {result.steps} steps in {result.seconds:.1f} s"
                self.statusBar().showMessage(message, 10000)
        elif intent == "reset":
            self.trainer = None
            self._set_state(RunState.IDLE)
            self.reset()
        else:
            self._set_state(RunState.PAUSED)
        self.job_finished.emit(result)

    # Files.

    def save(self) -> bool:
        """Save to the current file, or ask for one; returns whether the model was saved."""
        if self.path is None:
            return self.save_as()
        return self._write_model(self.path)

    def save_as(self) -> bool:
        suggested = self.path.name if self.path else "model.dflow"
        chosen = self.choose_save_file("Save model", files.MODEL_FILTER, suggested)
        if chosen is None:
            return False
        return self._write_model(files.with_suffix(chosen[0], chosen[1], (".dflow",)))

    def _write_model(self, path: Path) -> bool:
        self._halt_and_wait("pause")
        try:
            target = self.editor.canvas.target()
        except TargetError:
            self.show_error(
                "Cannot save", f"Cannot save {path}: the target is all zero. Paint at least one cell first."
            )
            return False
        configs = self._configs()
        if configs is None:
            return False
        flow, train = configs
        model = self._ensure_model(flow, train)
        model.target = target
        model.train_config = train.to_dict()
        try:
            dflows.save(model, path)
        except (ModelFileError, OSError) as error:
            self.show_error("Save failed", f"{error}\nChoose another folder or file name.")
            return False
        log.debug("saved %s", path)
        self.path = Path(path)
        self._remember_folder(self.path)
        self._add_recent(self.path)
        self.set_dirty(False)
        self.statusBar().showMessage(f"Saved {path}", 5000)
        return True

    def open_model(self, path: str | Path | None = None) -> bool:
        """Open a .dflow file: target, settings, weights and history; returns success."""
        if not self._maybe_save_changes("open another model"):
            return False
        if path is None:
            path = self.choose_open_file("Open model", files.MODEL_FILTER + ";;All files (*)")
            if path is None:
                return False
        path = Path(path)
        self._halt_and_wait("stop")
        try:
            model = dflows.load(path)
        except ModelFileError as error:
            self.show_error(
                "Could not open the model",
                f"{error}.\nChoose a .dflow file saved by dflows or dflows-explorer.",
            )
            return False

        flow = model.config
        defaults = recommended_configs(None, flow.vocab_size)[1]
        train, notes = files.train_config_from_dict(model.train_config, defaults)
        notes += self.panel.set_configs(flow, train)
        if model.target is not None:
            self.editor.set_target(model.target, record=False)
        else:
            notes.append("the file has no target; the current target was resampled to its K")
            self.editor.resize(flow.vocab_size)
        self._discard_model()
        self.model = model
        self.path = path
        self._remember_folder(path)
        self._add_recent(path)
        self.set_dirty(False)
        self._set_state(RunState.IDLE)
        self.refresh_preview()
        message = f"Opened {path}"
        if notes:
            message += " (" + "; ".join(notes) + ")"
            log.info("%s", message)
        self.statusBar().showMessage(message, 15000)
        return True

    def load_target_file(self, invert: bool = False) -> bool:
        if self.state is not RunState.IDLE:
            return False
        path = self.choose_open_file("Load target", files.TARGET_OPEN_FILTER)
        if path is None:
            return False
        try:
            if Path(path).suffix.lower() == ".npy":
                target = load_npy(path, self.editor.size)
            else:
                target = load_image(path, self.editor.size, invert=invert)
        except TargetError as error:
            self.show_error(
                "Could not load the target",
                f"{error}.\nChoose a PNG or JPEG image or a .npy array of non-negative numbers. "
                "The painted target is unchanged.",
            )
            return False
        self._remember_folder(Path(path))
        self.editor.set_target(target)
        self.statusBar().showMessage(f"Loaded the target from {path}", 5000)
        return True

    def save_target_file(self) -> bool:
        chosen = self.choose_save_file("Save target", files.TARGET_SAVE_FILTER, "target.npy")
        if chosen is None:
            return False
        path = files.with_suffix(chosen[0], chosen[1], (".npy", ".png"))
        try:
            save_target(self.editor.canvas.weights, path)
        except (TargetError, OSError) as error:
            self.show_error(
                "Could not save the target", f"{error}\nPaint at least one cell, or choose another file."
            )
            return False
        self._remember_folder(path)
        self.statusBar().showMessage(f"Saved the target to {path}", 5000)
        return True

    def export_samples(self) -> bool:
        """Draw samples from the model and write them as rows (row, col) to .npy or .csv."""
        self._halt_and_wait("pause")
        count = self.ask_sample_count()
        if count is None:
            return False
        chosen = self.choose_save_file("Export samples", files.SAMPLES_FILTER, "samples.npy")
        if chosen is None:
            return False
        path = files.with_suffix(chosen[0], chosen[1], (".npy", ".csv"))
        configs = self._configs()
        if configs is None:
            return False
        model = self._ensure_model(*configs)
        torch.set_num_threads(GUI_TORCH_THREADS)
        generator = torch.Generator().manual_seed(configs[1].seed)
        samples = model.sample(count, generator=generator).cpu().numpy()
        try:
            files.write_samples(samples, path)
        except (OSError, ValueError) as error:
            self.show_error("Could not export the samples", f"{error}\nChoose another folder or file name.")
            return False
        self._remember_folder(path)
        self.statusBar().showMessage(f"Wrote {count} samples to {path}", 5000)
        return True

    def _export_widget(self, widget: QtWidgets.QWidget, suggested: str) -> bool:
        chosen = self.choose_save_file("Export PNG", files.PNG_FILTER, suggested)
        if chosen is None:
            return False
        path = files.with_suffix(chosen[0], chosen[1], (".png",))
        if not widget.grab().save(str(path), "PNG"):
            self.show_error("Export failed", f"Could not write {path}. Choose another folder or file name.")
            return False
        self._remember_folder(path)
        self.statusBar().showMessage(f"Exported {path}", 5000)
        return True

    def export_view(self, key: str) -> bool:
        return self._export_widget(self.views[key], f"{key}.png")

    def export_window(self) -> bool:
        return self._export_widget(self, "dflows-explorer.png")

    # Closing.

    def closeEvent(self, event: QtGui.QCloseEvent) -> None:  # noqa: N802 (Qt override)
        if not self._maybe_save_changes("close the window"):
            event.ignore()
            return
        self.preview_timer.stop()
        self._halt_and_wait("close", self.close_wait_ms)
        self.save_preferences()
        log.debug("window closed")
        event.accept()

    def close_without_prompt(self) -> None:
        """Close even with unsaved changes (used by ``--quit-after-ms``)."""
        self.set_dirty(False)
        self.close()

    def job_running(self) -> bool:
        return self.thread is not None and self.thread.isRunning()
