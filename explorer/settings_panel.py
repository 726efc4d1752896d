"""The settings panel: every FlowConfig and TrainConfig field, grouped, with errors inline.

The panel is built from the dataclass fields, not from a fixed list, so a field that a
newer dflows adds appears in the Advanced group with an editor chosen from the type of
its recommended value. The panel never hard-codes a default: ``set_configs`` fills it,
and the app passes ``dflows.config.recommended_configs``.
"""

from __future__ import annotations

import ast
import dataclasses
import math
import os
import re
from dataclasses import dataclass
from typing import Any

from PySide6 import QtCore, QtWidgets

from dflows.config import ConfigError, FlowConfig, TrainConfig
from dflows.devices import DeviceError, available_devices, resolve_device
from dflows.targets import MAX_GRID, MIN_GRID

INT_LIMIT = 2**31 - 1  # the largest value a QSpinBox (a C int) stores


@dataclass(frozen=True)
class FieldSpec:
    """Display settings of one config field: label, group, editor kind and limits."""

    label: str
    group: str
    kind: str  # int, float, optional_float, choice, bool, steps, device, text, literal
    help: str
    minimum: float = 0
    maximum: float = INT_LIMIT
    choices: tuple[tuple[Any, str], ...] = ()
    placeholder: str = ""
    live: bool = False


FLOW_FIELDS: dict[str, FieldSpec] = {
    "vocab_size": FieldSpec(
        "Grid size K", "Grid", "int",
        "Classes per variable: the target is a K x K grid. Changing K resamples the target.",
        MIN_GRID, MAX_GRID,
    ),
    "layers": FieldSpec("Coupling layers", "Model", "int", "Number of coupling layers", 1, 32),
    "layer_type": FieldSpec(
        "Layer type", "Model", "choice",
        "Shift: y = x + loc (mod K). Location-scale: y = loc + scale * x (mod K), with scale "
        "restricted to the units of Z_K.",
        choices=(("shift", "Shift"), ("affine", "Location-scale")),
    ),
    "conditioner": FieldSpec(
        "Conditioner", "Model", "choice",
        "What maps the kept variable to the shift: a lookup table (one row per value) or an MLP",
        choices=(("table", "Lookup table"), ("mlp", "MLP")),
    ),
    "hidden": FieldSpec("MLP hidden width", "Model", "int", "Hidden units of the MLP conditioner", 1, 4096),
    "identity_bias": FieldSpec(
        "Identity bias", "Advanced", "float",
        "Initial logit advantage of the identity map in every layer", -100, 100,
    ),
    "init_std": FieldSpec(
        "Initial logit std", "Advanced", "float",
        "Standard deviation of the random initial logits", 0, 100,
    ),
}

TRAIN_FIELDS: dict[str, FieldSpec] = {
    "method": FieldSpec(
        "Method", "Training", "choice",
        "Search: annealed exact search over the classes the lookup tables pick (table "
        "conditioners only). Gradient: Adam on straight-through gradients (any conditioner).",
        choices=(("search", "Exact search"), ("gradient", "Gradient (Adam)")),
    ),
    "steps": FieldSpec(
        "Steps", "Training", "steps",
        "Optimizer steps of one run; tick 'until stopped' to train until you press Stop",
        1, INT_LIMIT,
    ),
    "objective": FieldSpec(
        "Objective", "Training", "choice",
        "Exact: minimise -sum p(x) log q(x) over every cell of the target. "
        "Sampled: minimise the mean NLL of a batch drawn from the target.",
        choices=(("exact", "Exact"), ("sampled", "Sampled")),
    ),
    "batch_size": FieldSpec(
        "Batch size", "Training", "int", "Samples per step (sampled objective only)", 1, 1 << 22
    ),
    "lr": FieldSpec(
        "Learning rate", "Training", "float",
        "Adam learning rate of the coupling layers; may change while training", 1e-8, 10, live=True,
    ),
    "temperature": FieldSpec(
        "Temperature", "Training", "float",
        "Temperature of the straight-through softmax; may change while training",
        1e-4, 100, live=True,
    ),
    "seed": FieldSpec(
        "Seed", "Training", "int", "Seed of the initial weights, the batches and the samples",
        0, INT_LIMIT,
    ),
    "device": FieldSpec(
        "Device", "Device", "device", "Where to train; only devices present on this machine are listed"
    ),
    "threads": FieldSpec(
        "Threads", "Device", "int",
        "Torch intra-op threads while training. More than one thread can make small grids "
        "much slower.",
        1, max(1, os.cpu_count() or 1),
    ),
    "base_lr": FieldSpec(
        "Base learning rate", "Advanced", "optional_float",
        "Learning rate of the base distribution's logits; empty uses the learning rate",
        0, 10, placeholder="same as learning rate",
    ),
    "lr_final": FieldSpec(
        "Final learning rate", "Advanced", "optional_float",
        "Learning rate at the last step (cosine decay); empty keeps it constant. Needs a "
        "step count.",
        0, 10, placeholder="constant",
    ),
    "temperature_final": FieldSpec(
        "Final temperature", "Advanced", "optional_float",
        "Temperature at the last step (geometric schedule); empty keeps it constant. Needs a "
        "step count.",
        1e-4, 100, placeholder="constant",
    ),
    "restarts": FieldSpec(
        "Coarse starts", "Advanced", "int",
        "Search only: coarse-grid starts before the full-resolution sweeps (0 starts at full "
        "resolution)",
        0, 1000,
    ),
    "coarse_sweeps": FieldSpec(
        "Sweeps per coarse start", "Advanced", "int", "Search only: sweeps of each coarse start",
        1, 100000,
    ),
    "coarse_factor": FieldSpec(
        "Coarse factor", "Advanced", "optional_float",
        "Search only: the coarse starts use K / factor cells per axis; empty takes turns "
        "between several factors",
        1.5, 1000, placeholder="several in turn",
    ),
    "input_gradient": FieldSpec(
        "Gradient into conditioner inputs", "Advanced", "bool",
        "Let gradients flow into the conditioners' inputs",
    ),
    "base_init": FieldSpec(
        "Base initialisation", "Advanced", "choice",
        "Start the base distribution uniform, or at the target's marginals",
        choices=(("uniform", "Uniform"), ("marginals", "Target marginals")),
    ),
}

# Settings a flow needs that the panel does not show: a grid always has 2 variables.
HIDDEN_FIELDS = {"num_variables"}

GROUPS = ("Grid", "Model", "Training", "Device", "Advanced")

DEFAULT_SAMPLES = 20000


def spec_for_unknown(name: str, value: Any) -> FieldSpec:
    """Choose an editor for a config field this panel does not know, from its value's type."""
    label = name.replace("_", " ").capitalize()
    help_text = f"Setting '{name}' of this dflows version"
    if isinstance(value, bool):
        return FieldSpec(label, "Advanced", "bool", help_text)
    if isinstance(value, int):
        return FieldSpec(label, "Advanced", "int", help_text, -INT_LIMIT, INT_LIMIT)
    if isinstance(value, float):
        return FieldSpec(label, "Advanced", "float", help_text, -math.inf, math.inf)
    if isinstance(value, str):
        return FieldSpec(label, "Advanced", "text", help_text)
    return FieldSpec(label, "Advanced", "literal", help_text + " (a Python literal; empty is None)")


def format_number(value: float) -> str:
    return repr(float(value)) if abs(value) >= 1e-4 or value == 0 else f"{value:.6g}"


class FieldEditor:
    """One row of the panel: the input widget, its value and its error label."""

    def __init__(self, name: str, spec: FieldSpec) -> None:
        self.name = name
        self.spec = spec
        self.error_label = QtWidgets.QLabel()
        self.error_label.setStyleSheet("color: #e05050")
        self.error_label.setWordWrap(True)
        self.error_label.hide()
        self.widget = self._build()
        self.widget.setToolTip(spec.help)

    def _build(self) -> QtWidgets.QWidget:
        spec = self.spec
        if spec.kind == "int":
            box = QtWidgets.QSpinBox()
            box.setRange(int(max(spec.minimum, -INT_LIMIT)), int(min(spec.maximum, INT_LIMIT)))
            # Apply typed numbers on Enter or focus loss, not per keystroke: typing "45" into
            # K would otherwise resample the target to K = 4 first.
            box.setKeyboardTracking(False)
            self.changed = box.valueChanged
            return box
        if spec.kind in ("float", "optional_float", "text", "literal"):
            edit = QtWidgets.QLineEdit()
            edit.setPlaceholderText(spec.placeholder)
            self.changed = edit.editingFinished
            return edit
        if spec.kind in ("choice", "device"):
            combo = QtWidgets.QComboBox()
            choices = spec.choices
            if spec.kind == "device":
                choices = tuple(available_devices())
            for value, text in choices:
                combo.addItem(text, value)
            self.changed = combo.currentIndexChanged
            return combo
        if spec.kind == "bool":
            box = QtWidgets.QCheckBox()
            self.changed = box.toggled
            return box
        if spec.kind == "steps":
            container = QtWidgets.QWidget()
            row = QtWidgets.QHBoxLayout(container)
            row.setContentsMargins(0, 0, 0, 0)
            self.steps_box = QtWidgets.QSpinBox()
            self.steps_box.setRange(int(spec.minimum), int(spec.maximum))
            self.steps_box.setKeyboardTracking(False)
            self.until_stopped = QtWidgets.QCheckBox("until stopped")
            self.until_stopped.toggled.connect(lambda on: self.steps_box.setEnabled(not on))
            row.addWidget(self.steps_box, 1)
            row.addWidget(self.until_stopped)
            self.changed = _MergedSignal(self.steps_box.valueChanged, self.until_stopped.toggled)
            return container
        raise ValueError(f"unknown field kind {spec.kind!r}")

    def set_value(self, value: Any) -> str | None:
        """Show ``value``; returns a note when it cannot be shown as it is."""
        kind, widget = self.spec.kind, self.widget
        blocker = QtCore.QSignalBlocker(widget)
        note = None
        if kind == "int":
            widget.setValue(int(value))
        elif kind == "float":
            widget.setText(format_number(value))
        elif kind == "optional_float":
            widget.setText("" if value is None else format_number(value))
        elif kind == "text":
            widget.setText(str(value))
        elif kind == "literal":
            widget.setText("" if value is None else repr(value))
        elif kind == "bool":
            widget.setChecked(bool(value))
        elif kind == "choice":
            index = widget.findData(value)
            if index < 0:
                note = f"{self.spec.label}: {value!r} is unknown here; using {widget.itemText(0)}"
                index = 0
            widget.setCurrentIndex(index)
        elif kind == "device":
            note = self._set_device(str(value))
        elif kind == "steps":
            steps_blocker = QtCore.QSignalBlocker(self.steps_box)
            check_blocker = QtCore.QSignalBlocker(self.until_stopped)
            until = int(value) == 0
            self.until_stopped.setChecked(until)
            self.steps_box.setEnabled(not until)
            if not until:
                self.steps_box.setValue(int(value))
            del steps_blocker, check_blocker
        del blocker
        self.show_error(None)
        return note

    def _set_device(self, name: str) -> str | None:
        widget = self.widget
        try:
            resolved = str(resolve_device(name))
        except DeviceError as error:
            widget.setCurrentIndex(0)
            return f"{error}; using {widget.itemText(0)}"
        if resolved == "cuda":
            resolved = "cuda:0"
        index = widget.findData(resolved)
        if index < 0:
            index = 0
        widget.setCurrentIndex(index)
        return None

    def value(self) -> Any:
        """Return the field's value; raises ``ConfigError`` for text that is not a value."""
        kind, widget = self.spec.kind, self.widget
        if kind == "int":
            return widget.value()

        if kind == "bool":
            return widget.isChecked()
        if kind in ("choice", "device"):
            return widget.currentData()
        if kind == "steps":
            return 0 if self.until_stopped.isChecked() else self.steps_box.value()

        text = widget.text().strip()
        if kind == "text":
            return text
        if kind == "literal":
            if not text:
                return None
            try:
                return ast.literal_eval(text)
            except (ValueError, SyntaxError):
                return text
        if kind == "optional_float" and not text:
            return None

        try:
            number = float(text)
        except ValueError:
            raise ConfigError(f"{self.name}: {text!r} is not a number") from None
        if not math.isfinite(number):
            raise ConfigError(f"{self.name}: {text!r} is not a finite number")
        if not self.spec.minimum <= number <= self.spec.maximum:
            raise ConfigError(
                f"{self.name}={number:g} is out of range: use a value from "
                f"{self.spec.minimum:g} to {self.spec.maximum:g}"
            )
        return number

    def show_error(self, message: str | None) -> None:
        self.error_label.setText(message or "")
        self.error_label.setVisible(bool(message))

    def set_enabled(self, enabled: bool) -> None:
        self.widget.setEnabled(enabled)
        if self.spec.kind == "steps" and enabled:
            self.steps_box.setEnabled(not self.until_stopped.isChecked())


class _MergedSignal:
    """Lets ``FieldEditor.changed.connect`` reach two Qt signals at once."""

    def __init__(self, *signals) -> None:
        self.signals = signals

    def connect(self, slot) -> None:
        for signal in self.signals:
            signal.connect(slot)


class SettingsPanel(QtWidgets.QWidget):
    """Editors for the model and training settings, plus the number of samples per view.

    Signals: ``grid_size_changed(K)``; ``model_changed()`` for any other FlowConfig field;
    ``train_changed()`` for TrainConfig fields; ``live_changed(name, value)`` when the
    learning rate or temperature gets a new valid value (the only fields open while
    training); ``samples_changed(n)``.
    """

    grid_size_changed = QtCore.Signal(int)
    model_changed = QtCore.Signal()
    train_changed = QtCore.Signal()
    live_changed = QtCore.Signal(str, float)
    samples_changed = QtCore.Signal(int)

    def __init__(self, flow: FlowConfig, train: TrainConfig, parent=None) -> None:
        super().__init__(parent)
        self.flow_defaults = dataclasses.replace(flow)
        self.train_defaults = dataclasses.replace(train)
        self.locked = False

        self.group_boxes: dict[str, QtWidgets.QGroupBox] = {}
        self.forms: dict[str, QtWidgets.QFormLayout] = {}
        layout = QtWidgets.QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        for group in GROUPS:
            box = QtWidgets.QGroupBox(group)
            form = QtWidgets.QFormLayout(box)
            form.setFieldGrowthPolicy(QtWidgets.QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
            # In a narrow dock, fields move below their labels instead of widening the window.
            form.setRowWrapPolicy(QtWidgets.QFormLayout.RowWrapPolicy.WrapLongRows)
            self.group_boxes[group] = box
            self.forms[group] = form
            layout.addWidget(box)

        self.flow_editors = self._add_editors(FlowConfig, flow, FLOW_FIELDS, self._model_edited)
        self.train_editors = self._add_editors(TrainConfig, train, TRAIN_FIELDS, self._train_edited)
        self.flow_editors["vocab_size"].changed.connect(self._grid_size_edited)

        self.samples_spin = QtWidgets.QSpinBox()
        self.samples_spin.setRange(100, 1_000_000)
        self.samples_spin.setSingleStep(1000)
        self.samples_spin.setValue(DEFAULT_SAMPLES)
        self.samples_spin.setKeyboardTracking(False)
        self.samples_spin.setToolTip(
            "Samples drawn for the data and generated histograms at each view update"
        )
        self.samples_spin.valueChanged.connect(self.samples_changed)
        self.forms["Advanced"].addRow("Samples per view update", self.samples_spin)

        self.general_error = QtWidgets.QLabel()
        self.general_error.setStyleSheet("color: #e05050")
        self.general_error.setWordWrap(True)
        self.general_error.hide()
        layout.addWidget(self.general_error)
        layout.addStretch(1)

        self.set_configs(flow, train)

    def _add_editors(self, cls, defaults, specs, on_change) -> dict[str, FieldEditor]:
        editors = {}
        for field in dataclasses.fields(cls):
            if field.name in HIDDEN_FIELDS:
                continue
            value = getattr(defaults, field.name)
            spec = specs.get(field.name) or spec_for_unknown(field.name, value)
            editor = FieldEditor(field.name, spec)
            editor.changed.connect(lambda *_, name=field.name: on_change(name))
            form = self.forms[spec.group]
            label = QtWidgets.QLabel(spec.label)
            label.setToolTip(spec.help)
            form.addRow(label, editor.widget)
            form.addRow("", editor.error_label)
            editors[field.name] = editor
        return editors

    # Values.

    def set_configs(self, flow: FlowConfig, train: TrainConfig) -> list[str]:
        """Show two configs; returns notes about values that had to be replaced."""
        notes = []
        for editors, config in ((self.flow_editors, flow), (self.train_editors, train)):
            for name, editor in editors.items():
                note = editor.set_value(getattr(config, name))
                if note:
                    notes.append(note)
        self.hidden_flow = {name: getattr(flow, name) for name in HIDDEN_FIELDS}
        self.general_error.hide()
        self._update_dependent()
        return notes

    def set_flow_config(self, flow: FlowConfig) -> None:
        """Show model settings again, for example after the user declined a change."""
        for name, editor in self.flow_editors.items():
            editor.set_value(getattr(flow, name))
        self._update_dependent()

    def grid_size(self) -> int:
        return self.flow_editors["vocab_size"].value()

    def set_grid_size(self, size: int) -> None:
        """Show K without emitting ``grid_size_changed``."""
        self.flow_editors["vocab_size"].set_value(size)

    def samples(self) -> int:
        return self.samples_spin.value()

    def set_samples(self, samples: int) -> None:
        self.samples_spin.setValue(int(samples))

    def _collect(self, editors: dict[str, FieldEditor], cls, extra: dict) -> Any:
        values = dict(extra)
        for editor in editors.values():
            editor.show_error(None)
        for name, editor in editors.items():
            try:
                values[name] = editor.value()
            except ConfigError as error:
                editor.show_error(str(error))
                raise
        config = cls(**values)
        try:
            config.validate()
        except ConfigError as error:
            self._show_config_error(editors, error)
            raise
        return config

    def _show_config_error(self, editors: dict[str, FieldEditor], error: ConfigError) -> None:
        match = re.match(r"[A-Za-z_]+", str(error))
        editor = editors.get(match.group(0)) if match else None
        if editor is not None:
            editor.show_error(str(error))
        else:
            self.general_error.setText(str(error))
            self.general_error.show()

    def flow_config(self) -> FlowConfig:
        """Return the model settings; raises ``ConfigError`` and shows it beside the field."""
        return self._collect(self.flow_editors, FlowConfig, self.hidden_flow)

    def train_config(self) -> TrainConfig:
        """Return the training settings; raises ``ConfigError`` and shows it beside the field."""
        config = self._collect(self.train_editors, TrainConfig, {})
        self._check_combinations()
        return config

    def validate(self) -> str | None:
        """Check every field and show the errors; returns the first error message or None."""
        self.general_error.hide()
        first = None
        for getter in (self.flow_config, self.train_config):
            try:
                getter()
            except ConfigError as error:
                first = first or str(error)
        return first

    # Locking.

    def set_locked(self, locked: bool) -> None:
        """Lock every field except the live ones (learning rate and temperature)."""
        self.locked = bool(locked)
        for editors in (self.flow_editors, self.train_editors):
            for editor in editors.values():
                editor.set_enabled(editor.spec.live or not self.locked)
        if self.locked and self._value("method") == "search":
            # The search has no learning rate, so there is nothing to change live.
            self.train_editors["lr"].set_enabled(False)
        self._update_dependent()

    def _value(self, name: str) -> Any:
        editor = self.flow_editors.get(name) or self.train_editors.get(name)
        try:
            return None if editor is None else editor.value()
        except ConfigError:
            return None

    def _update_dependent(self) -> None:
        """Enable only the fields that matter for the chosen conditioner, method and objective.

        Fields that a dflows version lacks are skipped.
        """
        if self.locked:
            return
        search = self._value("method") == "search"
        sampled = self._value("objective") == "sampled"
        rules = {
            "hidden": self._value("conditioner") == "mlp",
            "batch_size": sampled and not search,
            "objective": not search,
            "lr": not search,
            "base_lr": not search,
            "lr_final": not search,
            "input_gradient": not search,
            "restarts": search,
            "coarse_sweeps": search,
            "coarse_factor": search,
        }
        for name, enabled in rules.items():
            editor = self.flow_editors.get(name) or self.train_editors.get(name)
            if editor is not None:
                editor.set_enabled(enabled)

    def _check_combinations(self) -> None:
        """Raise ``ConfigError`` for settings that are valid alone but not together."""
        if self._value("method") == "search" and self._value("conditioner") == "mlp":
            error = ConfigError(
                "method 'search' needs lookup-table conditioners: choose the gradient method "
                "or the lookup-table conditioner"
            )
            self.train_editors["method"].show_error(str(error))
            raise error

    # Change handlers.

    def _grid_size_edited(self, *_args) -> None:
        self.grid_size_changed.emit(self.grid_size())

    def _model_edited(self, name: str) -> None:
        self._update_dependent()
        self.validate()
        if name != "vocab_size":
            self.model_changed.emit()

    def _train_edited(self, name: str) -> None:
        self._update_dependent()
        self.validate()
        editor = self.train_editors[name]
        if editor.spec.live:
            try:
                value = editor.value()
            except ConfigError:
                return
            if editor.error_label.isHidden():
                self.live_changed.emit(name, float(value))
        if not self.locked:
            self.train_changed.emit()
