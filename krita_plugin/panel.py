"""The docker's widgets: what the painter sees and touches. No logic beyond showing and reading values;
the controller decides what happens."""

from __future__ import annotations

import math

from PyQt5.QtCore import Qt, pyqtSignal
from PyQt5.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QGroupBox,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSlider,
    QSpinBox,
    QStyle,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from ._compat import protocol
from .settings import MAX_SEED, ConnectionSettings, ControlLayerChoice, GenerationSettings, Mode, random_seed

STATUS_COLORS = {"ok": "#3a3", "busy": "#c90", "bad": "#c33", "off": "#888"}
DEFAULT_CHOICE = ""  # item data for "backend default" / "none"


class Panel(QScrollArea):
    connect_requested = pyqtSignal()
    live_toggled = pyqtSignal(bool)
    generate_clicked = pyqtSignal()
    apply_clicked = pyqtSignal()
    cancel_clicked = pyqtSignal()
    create_pose_clicked = pyqtSignal()
    settings_changed = pyqtSignal()
    mode_changed = pyqtSignal()

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("kld_panel")
        self.setWidgetResizable(True)
        body = QWidget(self)
        self.setWidget(body)
        layout = QVBoxLayout(body)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addWidget(self._build_connection())
        layout.addWidget(self._build_prompt())
        # Buttons, progress and messages right after the prompt: used all the time, never scrolled away.
        layout.addLayout(self._build_actions())
        self.progress = QProgressBar(objectName="kld_progress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress.setMaximumHeight(8)
        layout.addWidget(self.progress)
        self.message = QLabel("", objectName="kld_message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextSelectableByMouse)
        layout.addWidget(self.message)
        layout.addWidget(self._build_sampling())
        layout.addWidget(self._build_models())
        layout.addWidget(self._build_controls())
        layout.addStretch(1)
        self._update_mode_widgets()
        self._connect_change_signals()

    # --- building ------------------------------------------------------------------------------------------

    def _build_connection(self) -> QGroupBox:
        box = QGroupBox("Backend")
        form = QFormLayout(box)
        self.address = QLineEdit(f"127.0.0.1:{protocol.DEFAULT_PORT}", objectName="kld_address")
        self.address.setToolTip("Where the backend listens: host:port (start it with: python -m backend)")
        self.token = QLineEdit("", objectName="kld_token")
        self.token.setEchoMode(QLineEdit.Password)
        self.token.setPlaceholderText("only if the backend asks for one")
        self.connect_button = QPushButton("Connect", objectName="kld_connect")
        self.connect_button.clicked.connect(self.connect_requested)
        row = QHBoxLayout()
        row.addWidget(self.address, 1)
        row.addWidget(self.connect_button)
        form.addRow("Address", row)
        form.addRow("Token", self.token)
        self.status = QLabel("Not connected", objectName="kld_status")
        self.status.setWordWrap(True)
        form.addRow("Status", self.status)
        self.mode = QComboBox(objectName="kld_mode")
        for mode in Mode:
            self.mode.addItem(mode.label, mode.value)
        self.mode.currentIndexChanged.connect(self._update_mode_widgets)
        form.addRow("Mode", self.mode)
        return box

    def _build_prompt(self) -> QGroupBox:
        box = QGroupBox("Prompt")
        form = QFormLayout(box)
        self.prompt = QPlainTextEdit(objectName="kld_prompt")
        self.prompt.setPlaceholderText("what the image shows, e.g. a castle on a hill at dawn, oil painting")
        self.prompt.setMaximumHeight(64)
        self.prompt.setTabChangesFocus(True)
        form.addRow(self.prompt)
        self.negative = QLineEdit(objectName="kld_negative")
        self.negative.setPlaceholderText("what to avoid (negative prompt)")
        form.addRow(self.negative)
        return box

    def _build_sampling(self) -> QGroupBox:
        box = QGroupBox("Generation")
        form = QFormLayout(box)
        self.strength = QSlider(Qt.Horizontal, objectName="kld_strength")
        self.strength.setRange(0, 100)
        self.strength.setValue(50)
        self.strength_label = QLabel("50%")
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v}%"))
        self.strength.setToolTip("How much the image may change: low keeps your painting, 100% repaints it")
        row = QHBoxLayout()
        row.addWidget(self.strength, 1)
        row.addWidget(self.strength_label)
        form.addRow("Strength", row)
        self.seed = QSpinBox(objectName="kld_seed")
        self.seed.setRange(0, MAX_SEED)
        self.dice = QToolButton(objectName="kld_dice")
        # A standard icon: emoji glyphs are missing from many systems' fonts.
        self.dice.setIcon(self.style().standardIcon(QStyle.SP_BrowserReload))
        self.dice.setToolTip("New random seed")
        self.dice.clicked.connect(lambda: self.seed.setValue(random_seed()))
        self.seed_lock = QCheckBox("Lock", objectName="kld_seed_lock")
        self.seed_lock.setToolTip(
            "Keep this seed for every Generate (Live always keeps it, so the image stays calm)"
        )
        row = QHBoxLayout()
        row.addWidget(self.seed, 1)
        row.addWidget(self.dice)
        row.addWidget(self.seed_lock)
        form.addRow("Seed", row)
        self.steps = QSpinBox(objectName="kld_steps")
        self.steps.setRange(1, 50)
        self.steps.setValue(4)
        self.cfg = QDoubleSpinBox(objectName="kld_cfg")
        self.cfg.setRange(0.0, 30.0)
        self.cfg.setSingleStep(0.1)
        self.cfg.setValue(1.0)
        row = QHBoxLayout()
        row.addWidget(QLabel("Steps"))
        row.addWidget(self.steps)
        row.addWidget(QLabel("CFG"))
        row.addWidget(self.cfg)
        form.addRow(row)
        self.sampler = QComboBox(objectName="kld_sampler")
        for name in protocol.SAMPLERS:
            self.sampler.addItem(name, name)
        form.addRow("Sampler", self.sampler)
        return box

    def _build_models(self) -> QGroupBox:
        box = QGroupBox("Models")
        form = QFormLayout(box)
        self.checkpoint = QComboBox(objectName="kld_checkpoint")
        self.checkpoint.addItem("Backend default", DEFAULT_CHOICE)
        form.addRow("Checkpoint", self.checkpoint)
        self.lora = QComboBox(objectName="kld_lora")
        self.lora.addItem("None", DEFAULT_CHOICE)
        self.lora_strength = _strength_spin("kld_lora_strength")
        row = QHBoxLayout()
        row.addWidget(self.lora, 1)
        row.addWidget(self.lora_strength)
        form.addRow("LoRA", row)
        return box

    def _build_controls(self) -> QGroupBox:
        box = QGroupBox("Guidance layers")
        form = QFormLayout(box)
        self.scribble_layer = QComboBox(objectName="kld_scribble_layer")
        self.scribble_layer.addItem("None", DEFAULT_CHOICE)
        self.scribble_layer.setToolTip("A layer with lines to follow (it is left out of the image itself)")
        self.scribble_strength = _strength_spin("kld_scribble_strength")
        row = QHBoxLayout()
        row.addWidget(self.scribble_layer, 1)
        row.addWidget(self.scribble_strength)
        form.addRow("Scribble", row)
        self.pose_layer = QComboBox(objectName="kld_pose_layer")
        self.pose_layer.addItem("None", DEFAULT_CHOICE)
        self.pose_layer.setToolTip("A pose layer: move its joints with the shape select tool")
        self.new_pose = QToolButton(objectName="kld_new_pose")
        self.new_pose.setText("New")
        self.new_pose.setToolTip("Add a pose layer with a figure to move joint by joint")
        self.new_pose.clicked.connect(self.create_pose_clicked)
        self.pose_strength = _strength_spin("kld_pose_strength")
        row = QHBoxLayout()
        row.addWidget(self.pose_layer, 1)
        row.addWidget(self.new_pose)
        row.addWidget(self.pose_strength)
        form.addRow("Pose", row)
        return box

    def _build_actions(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.live = QPushButton("Live", objectName="kld_live")
        self.live.setCheckable(True)
        self.live.setToolTip("Repaint continuously while you paint")
        self.live.toggled.connect(lambda on: self.live.setText("● Live" if on else "Live"))
        self.live.toggled.connect(self.live_toggled)
        self.generate = QPushButton("Generate", objectName="kld_generate")
        self.generate.clicked.connect(self.generate_clicked)
        self.apply = QPushButton("Apply", objectName="kld_apply")
        self.apply.setToolTip("Keep the result as a new layer (named with the prompt and seed)")
        self.apply.clicked.connect(self.apply_clicked)
        self.cancel = QPushButton("Cancel", objectName="kld_cancel")
        self.cancel.clicked.connect(self.cancel_clicked)
        for button in (self.live, self.generate, self.apply, self.cancel):
            row.addWidget(button)
        return row

    def _connect_change_signals(self) -> None:
        for signal in (
            self.prompt.textChanged, self.negative.textChanged, self.strength.valueChanged,
            self.seed.valueChanged, self.seed_lock.toggled, self.steps.valueChanged, self.cfg.valueChanged,
            self.sampler.currentIndexChanged, self.checkpoint.currentIndexChanged,
            self.lora.currentIndexChanged, self.lora_strength.valueChanged,
            self.scribble_layer.currentIndexChanged, self.scribble_strength.valueChanged,
            self.pose_layer.currentIndexChanged, self.pose_strength.valueChanged,
            self.mode.currentIndexChanged,
        ):  # fmt: skip
            signal.connect(self.settings_changed)

    def _update_mode_widgets(self) -> None:
        live_mode = self.current_mode() is Mode.LIVE
        self.live.setVisible(live_mode)
        self.generate.setVisible(not live_mode)
        if not live_mode and self.live.isChecked():
            self.live.setChecked(False)
        self.generate.setText("Inpaint" if self.current_mode() is Mode.INPAINT else "Generate")
        self.mode_changed.emit()

    # --- reading --------------------------------------------------------------------------------------------

    def current_mode(self) -> Mode:
        return Mode(self.mode.currentData() or Mode.LIVE.value)

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
            mode=self.current_mode(),
            prompt=self.prompt.toPlainText().strip(),
            negative_prompt=self.negative.text().strip(),
            strength=self.strength.value() / 100.0,
            seed=self.seed.value(),
            seed_locked=self.seed_lock.isChecked(),
            steps=self.steps.value(),
            cfg=round(self.cfg.value(), 2),
            sampler=self.sampler.currentData() or "lcm",
            checkpoint=self.checkpoint.currentData() or "",
            lora=self.lora.currentData() or "",
            lora_strength=self.lora_strength.value(),
            scribble=ControlLayerChoice(
                self.scribble_layer.currentData() or "", self.scribble_strength.value()
            ),
            pose=ControlLayerChoice(self.pose_layer.currentData() or "", self.pose_strength.value()),
        )

    def connection(self) -> ConnectionSettings:
        return ConnectionSettings(self.address.text().strip(), self.token.text().strip())

    # --- showing --------------------------------------------------------------------------------------------

    def set_settings(self, settings: GenerationSettings) -> None:
        self.mode.setCurrentIndex(max(0, self.mode.findData(settings.mode.value)))
        self.prompt.setPlainText(settings.prompt)
        self.negative.setText(settings.negative_prompt)
        # Saved settings may hold anything (an edited kritarc, another version): out-of-range integers make
        # Qt's setValue raise and NaN can't be rounded, so every number is clamped into its widget's range.
        self.strength.setValue(round(min(1.0, max(0.0, _finite(settings.strength, 0.5))) * 100))
        self.seed.setValue(_clamp(settings.seed, self.seed))
        self.seed_lock.setChecked(settings.seed_locked)
        self.steps.setValue(_clamp(settings.steps, self.steps))
        self.cfg.setValue(_finite(settings.cfg, 1.0))
        _select(self.sampler, settings.sampler)
        _select(self.checkpoint, settings.checkpoint, add=True)
        _select(self.lora, settings.lora, add=True)
        self.lora_strength.setValue(_finite(settings.lora_strength, 1.0))
        self.scribble_strength.setValue(_finite(settings.scribble.strength, 1.0))
        self.pose_strength.setValue(_finite(settings.pose.strength, 1.0))

    def set_connection(self, connection: ConnectionSettings) -> None:
        self.address.setText(connection.address)
        self.token.setText(connection.token)

    def set_status(self, text: str, state: str) -> None:
        color = STATUS_COLORS.get(state, STATUS_COLORS["off"])
        self.status.setText(f'<span style="color:{color}">●</span> {_escape(text)}')
        self.status.setProperty("state", state)

    def set_message(self, text: str, error: bool = False) -> None:
        self.message.setText(
            f'<span style="color:{STATUS_COLORS["bad"]}">{_escape(text)}</span>' if error else _escape(text)
        )
        self.message.setProperty("error", error)
        self.message.setProperty("plain", text)

    def set_progress(self, step: int, total: int) -> None:
        self.progress.setRange(0, max(1, total))
        self.progress.setValue(min(step, max(1, total)))

    def set_waiting(self) -> None:
        self.progress.setRange(0, 0)  # an animated "working" bar until the first progress report

    def set_idle(self) -> None:
        self.progress.setRange(0, 1)
        self.progress.setValue(0)

    def set_seed(self, seed: int) -> None:
        self.seed.setValue(min(seed, MAX_SEED))

    def set_live(self, on: bool) -> None:
        self.live.setChecked(on)

    def set_models(self, models: dict[str, list[str]], samplers: list[str]) -> None:
        _fill(self.checkpoint, "Backend default", models.get("checkpoints") or [])
        # The LCM LoRA is the backend's business (it speeds up every model); list the painter's style LoRAs.
        _fill(self.lora, "None", [n for n in models.get("loras") or [] if "lcm" not in n.lower()])
        if samplers:
            _fill(self.sampler, None, [s for s in samplers if isinstance(s, str)])

    def set_layer_choices(self, scribble: list[tuple[str, str]], pose: list[tuple[str, str]]) -> None:
        _fill_pairs(self.scribble_layer, "None", scribble)
        _fill_pairs(self.pose_layer, "None", pose)

    def select_pose_layer(self, node_id: str) -> None:
        _select(self.pose_layer, node_id)

    def select_scribble_layer(self, node_id: str) -> None:
        _select(self.scribble_layer, node_id)


def _strength_spin(name: str) -> QDoubleSpinBox:
    spin = QDoubleSpinBox(objectName=name)
    spin.setRange(0.0, 2.0)
    spin.setSingleStep(0.05)
    spin.setValue(1.0)
    spin.setToolTip("Strength")
    return spin


def _finite(value: float, default: float) -> float:
    return value if math.isfinite(value) else default


def _clamp(value: int, widget: QSpinBox | QSlider) -> int:
    return max(widget.minimum(), min(widget.maximum(), int(value)))


def _escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _select(combo: QComboBox, data: str, add: bool = False) -> None:
    index = combo.findData(data)
    if index < 0 and add and data:
        combo.addItem(f"{data} (not on the backend)", data)
        index = combo.count() - 1
    combo.setCurrentIndex(max(0, index))


def _fill(combo: QComboBox, default_label: str | None, names: list[str]) -> None:
    pairs = [(name, name) for name in names]
    _fill_pairs(combo, default_label, pairs)


def _fill_pairs(combo: QComboBox, default_label: str | None, pairs: list[tuple[str, str]]) -> None:
    """Replaces the items, keeping the current choice when it is still there; silent when nothing changed."""
    wanted = ([(DEFAULT_CHOICE, default_label)] if default_label is not None else []) + [
        (d, t) for d, t in pairs
    ]
    have = [(combo.itemData(i), combo.itemText(i)) for i in range(combo.count())]
    if have == wanted:
        return
    current = combo.currentData()
    combo.blockSignals(True)
    try:
        combo.clear()
        for data, text in wanted:
            combo.addItem(text, data)
        index = combo.findData(current)
        combo.setCurrentIndex(max(0, index))
    finally:
        combo.blockSignals(False)
    if combo.currentData() != current:
        combo.currentIndexChanged.emit(combo.currentIndex())
