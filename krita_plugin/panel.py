"""The docker's widgets: what the painter sees and touches. No logic beyond showing and reading values;
the controller decides what happens.

Order follows use: the status line, the prompt, Live / Generate / Cancel, the result and its history, Apply;
then folded sections (generation, guidance layers, models, backend). Every row fits Krita's default docker
width (about 260 px) without a horizontal scrollbar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TypeVar

from ._compat import protocol
from .model_lists import Choice, ModelListing, checkpoint_choices, lora_choices
from .qt import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QIcon,
    QLabel,
    QLineEdit,
    QPlainTextEdit,
    QProgressBar,
    QPushButton,
    QScrollArea,
    QSizePolicy,
    QSlider,
    QSpinBox,
    QStandardItemModel,
    QStyle,
    Qt,
    QToolButton,
    QVBoxLayout,
    QWidget,
    pyqtSignal,
)
from .reference_rows import ReferenceRows
from .references import ipadapter_names
from .region_rows import RegionRows
from .result_view import HistoryStrip, ResultView
from .settings import (
    MAX_BATCH,
    MAX_SEED,
    RESOLUTIONS,
    ConnectionSettings,
    ControlLayerChoice,
    GenerationSettings,
    random_seed,
)
from .upscaling import DEFAULT_REFINE_STRENGTH
from .upscaling import FACTORS as UPSCALE_FACTORS

STATUS_COLORS = {"ok": "#3a3", "busy": "#c90", "bad": "#c33", "off": "#888"}
DEFAULT_CHOICE = ""  # item data for "backend default" / "none"
COMBO_MIN_CHARS = 3  # combos shrink to this many characters instead of widening the docker

WidgetT = TypeVar("WidgetT", bound=QWidget)


class Section(QWidget):
    """A titled, foldable group: the header toggles the body (folded sections keep the panel short)."""

    def __init__(self, title: str, name: str, expanded: bool = False, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.header = _named(QToolButton(), f"kld_section_{name}")
        self.header.setText(title)
        self.header.setCheckable(True)
        self.header.setChecked(expanded)
        self.header.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.header.setAutoRaise(True)
        self.header.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
        self.body = QWidget(self)
        self.form = QFormLayout(self.body)
        self.form.setContentsMargins(8, 0, 0, 4)
        self.form.setFieldGrowthPolicy(QFormLayout.FieldGrowthPolicy.AllNonFixedFieldsGrow)
        self.form.setRowWrapPolicy(QFormLayout.RowWrapPolicy.WrapLongRows)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(0)
        layout.addWidget(self.header)
        layout.addWidget(self.body)
        self.header.toggled.connect(self.set_expanded)
        self.set_expanded(expanded)

    def set_expanded(self, expanded: bool) -> None:
        self.header.setArrowType(Qt.ArrowType.DownArrow if expanded else Qt.ArrowType.RightArrow)
        if self.header.isChecked() != expanded:
            self.header.setChecked(expanded)
        self.body.setVisible(expanded)


class Panel(QScrollArea):
    connect_requested = pyqtSignal()
    live_toggled = pyqtSignal(bool)
    generate_clicked = pyqtSignal()
    apply_clicked = pyqtSignal()
    apply_onto_clicked = pyqtSignal()
    cancel_clicked = pyqtSignal()
    create_layer_clicked = pyqtSignal(str)  # a guidance row's "+": the control kind's name
    from_image_clicked = pyqtSignal(str)  # a guidance row's "from image": the control kind's name
    upscale_clicked = pyqtSignal()  # Upscale: the image or selection, by upscale_factor (upscaling.py)
    history_picked = pyqtSignal(str)
    settings_changed = pyqtSignal()
    guidance_changed = pyqtSignal()  # the painter picked another guidance layer

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("kld_panel")
        self.setWidgetResizable(True)
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.body = QWidget(self)
        self.setWidget(self.body)
        layout = QVBoxLayout(self.body)
        layout.setContentsMargins(4, 4, 4, 4)
        self.status = _named(QLabel("● Not connected"), "kld_status")
        self.status.setWordWrap(True)
        self.status.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout.addWidget(self.status)
        layout.addWidget(self._build_prompt())
        layout.addLayout(self._build_actions())
        self.progress = _named(QProgressBar(), "kld_progress")
        self.progress.setRange(0, 1)
        self.progress.setValue(0)
        self.progress.setTextVisible(False)
        self.progress.setFixedHeight(6)
        layout.addWidget(self.progress)
        self.result_view = ResultView(self.body)
        layout.addWidget(self.result_view, 1)
        self.history = HistoryStrip(self.body)
        self.history.picked.connect(self.history_picked)
        layout.addWidget(self.history)
        layout.addLayout(self._build_apply())
        self.message = _named(QLabel(""), "kld_message")
        self.message.setWordWrap(True)
        self.message.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.message.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Minimum)
        # Room for two lines whatever the message: a new message never moves the widgets below it.
        self.message.setMinimumHeight(2 * self.message.fontMetrics().lineSpacing() + 4)
        # PyQt5's stub types AlignmentFlag | AlignmentFlag as int; at runtime it is a Qt.Alignment.
        self.message.setAlignment(
            Qt.AlignmentFlag.AlignLeft | Qt.AlignmentFlag.AlignTop  # pyright: ignore[reportArgumentType]
        )
        layout.addWidget(self.message)
        self.sections = {
            "generation": self._build_sampling(),
            "guidance": self._build_guidance(),
            "references": self._build_references(),
            "regions": self._build_regions(),
            "models": self._build_models(),
            "backend": self._build_connection(),
        }
        for section in self.sections.values():
            layout.addWidget(section)
        layout.addStretch(0)
        self._connect_change_signals()
        self.set_can_apply(False)

    # --- building ------------------------------------------------------------------------------------------

    def _build_prompt(self) -> QWidget:
        box = QWidget(self.body)
        layout = QVBoxLayout(box)
        layout.setContentsMargins(0, 0, 0, 0)
        self.prompt = _named(QPlainTextEdit(), "kld_prompt")
        self.prompt.setPlaceholderText("what the image shows, e.g. a castle on a hill at dawn, oil painting")
        self.prompt.setFixedHeight(3 * self.prompt.fontMetrics().lineSpacing() + 12)
        self.prompt.setTabChangesFocus(True)
        layout.addWidget(self.prompt)
        self.negative = _named(QLineEdit(), "kld_negative")
        self.negative.setPlaceholderText("what to avoid (negative prompt)")
        layout.addWidget(self.negative)
        return box

    def _build_actions(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.live = _named(QPushButton("Live"), "kld_live")
        self.live.setCheckable(True)
        self.live.setToolTip("Repaint continuously as you paint: each finished stroke is sent at once")
        self.live.toggled.connect(lambda on: self.live.setText("● Live" if on else "Live"))
        self.live.toggled.connect(self.live_toggled)
        self.generate = _named(QPushButton("Generate"), "kld_generate")
        self.generate.setToolTip("Render once (with a selection: only the selection is redrawn)")
        self.generate.clicked.connect(self.generate_clicked)
        self.cancel = _named(QToolButton(), "kld_cancel")
        self.cancel.setIcon(_standard_icon(self, QStyle.StandardPixmap.SP_BrowserStop))
        self.cancel.setToolTip("Cancel (also stops Live)")
        self.cancel.clicked.connect(self.cancel_clicked)
        row.addWidget(self.live, 1)
        row.addWidget(self.generate, 1)
        row.addWidget(self.cancel)
        return row

    def _build_apply(self) -> QHBoxLayout:
        row = QHBoxLayout()
        self.apply = _named(QPushButton("Apply"), "kld_apply")
        self.apply.setToolTip("Keep the shown result as a new layer above the active layer")
        self.apply.clicked.connect(self.apply_clicked)
        self.apply_onto = _named(QPushButton("Onto layer"), "kld_apply_onto")
        self.apply_onto.setToolTip("Paint the shown result onto the active paint layer")
        self.apply_onto.clicked.connect(self.apply_onto_clicked)
        row.addWidget(self.apply, 1)
        row.addWidget(self.apply_onto, 1)
        return row

    def _build_sampling(self) -> Section:
        section = Section("Generation", "generation", expanded=True)
        form = section.form
        self.strength = _named(QSlider(Qt.Orientation.Horizontal), "kld_strength")
        self.strength.setRange(0, 100)
        self.strength.setValue(50)
        self.strength_label = QLabel("50%")
        self.strength_label.setFixedWidth(self.strength_label.fontMetrics().horizontalAdvance("100%") + 4)
        self.strength.valueChanged.connect(lambda v: self.strength_label.setText(f"{v}%"))
        self.strength.setToolTip("How much the image may change: low keeps your painting, 100% repaints it")
        form.addRow("Strength", _row(self.strength, self.strength_label))
        self.resolution = _named(QComboBox(), "kld_resolution")
        for value in RESOLUTIONS:
            self.resolution.addItem(f"{value:g}x", value)
        self.resolution.setCurrentIndex(RESOLUTIONS.index(1.0))
        self.resolution.setToolTip(
            "Working resolution: 1x renders at the model's native size (about 512x512 for SD 1.5, 1024x1024 "
            "for SDXL), whatever the canvas size; the result is scaled to the canvas. Higher is sharper and "
            "slower."
        )
        self.batch = _named(QSpinBox(), "kld_batch")
        self.batch.setRange(1, MAX_BATCH)
        self.batch.setToolTip("Generate makes this many variations (consecutive seeds)")
        form.addRow("Size", _row(self.resolution, QLabel("Batch"), self.batch))
        self.seed = _named(QSpinBox(), "kld_seed")
        self.seed.setRange(0, MAX_SEED)
        self.seed.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.dice = _named(QToolButton(), "kld_dice")
        self.dice.setIcon(_standard_icon(self, QStyle.StandardPixmap.SP_BrowserReload))
        self.dice.setToolTip("New random seed")
        self.dice.clicked.connect(lambda: self.seed.setValue(random_seed()))
        self.seed_lock = _named(QCheckBox("Lock"), "kld_seed_lock")
        self.seed_lock.setToolTip("Keep this seed for every Generate (Live always keeps it)")
        form.addRow("Seed", _row(self.seed, self.dice, self.seed_lock))
        self.steps = _named(QSpinBox(), "kld_steps")
        self.steps.setRange(1, 50)
        self.steps.setValue(4)
        self.cfg = _named(QDoubleSpinBox(), "kld_cfg")
        self.cfg.setRange(0.0, 30.0)
        self.cfg.setSingleStep(0.1)
        self.cfg.setValue(1.0)
        form.addRow("Steps", _row(self.steps, QLabel("CFG"), self.cfg))
        self.sampler = _combo("kld_sampler")
        for name in protocol.SAMPLERS:
            self.sampler.addItem(protocol.sampler_label(name), name)
        form.addRow("Sampler", self.sampler)
        self._build_upscale(form)
        return section

    def _build_upscale(self, form: QFormLayout) -> None:
        self.upscale_factor = _combo("kld_upscale_factor")
        for factor in UPSCALE_FACTORS:
            self.upscale_factor.addItem(f"{factor}x", factor)
        self.upscale_refine = _named(QCheckBox("Refine"), "kld_upscale_refine")
        self.upscale_refine.setChecked(True)
        self.upscale_refine.setToolTip("Add detail at the new size: img2img tile by tile, with this strength")
        self.upscale_strength = _strength_spin("kld_upscale_strength")
        self.upscale_strength.setRange(0.05, 1.0)
        self.upscale_strength.setValue(DEFAULT_REFINE_STRENGTH)
        self.upscale_strength.setToolTip("Refine strength: low adds detail, high redraws each tile")
        self.upscale_refine.toggled.connect(self.upscale_strength.setEnabled)
        self.upscale = _named(QPushButton("Upscale"), "kld_upscale")
        self.upscale.setToolTip(
            "Enlarge the image (or the selection) with the backend's upscale model, refine it, and keep it "
            "as a new layer: the document grows by the same factor"
        )
        self.upscale.clicked.connect(self.upscale_clicked)
        form.addRow("Upscale", _row(self.upscale, self.upscale_factor))
        form.addRow("", _row(self.upscale_refine, self.upscale_strength))

    def _build_guidance(self) -> Section:
        """A row per control kind of the protocol's table: its layer, "+" (a new layer), its strength."""
        section = Section("Guidance layers", "guidance")
        self.guidance_rows: dict[str, GuidanceRow] = {}
        for kind in protocol.CONTROL_KINDS.values():
            row = GuidanceRow.build(kind)
            row.new_layer.clicked.connect(lambda *_, name=kind.name: self.create_layer_clicked.emit(name))
            buttons = [row.new_layer]
            if row.from_image is not None:
                row.from_image.clicked.connect(lambda *_, name=kind.name: self.from_image_clicked.emit(name))
                buttons.append(row.from_image)
            row.holder = _row(row.layer, *buttons, row.strength)
            section.form.addRow(kind.label, row.holder)
            self.guidance_rows[kind.name] = row
        self.guidance_form = section.form
        return section

    def _build_references(self) -> Section:
        """Reference images (reference_rows.py); the controller keeps them in the document."""
        section = Section("Reference images", "references")
        self.reference_rows = ReferenceRows(section.body)
        section.form.addRow(self.reference_rows)
        return section

    def _build_regions(self) -> Section:
        """A prompt per layer (region_rows.py); the controller keeps them in the document."""
        section = Section("Regions", "regions")
        self.region_rows = RegionRows(section.body)
        section.form.addRow(self.region_rows)
        return section

    def _build_models(self) -> Section:
        section = Section("Models", "models")
        form = section.form
        self.checkpoint = _combo("kld_checkpoint")
        self.checkpoint.addItem("Backend default", DEFAULT_CHOICE)
        form.addRow("Model", self.checkpoint)
        self.lora = _combo("kld_lora")
        self.lora.addItem("None", DEFAULT_CHOICE)
        self.lora_strength = _strength_spin("kld_lora_strength")
        form.addRow("LoRA", _row(self.lora, self.lora_strength))
        self.listing = ModelListing()
        self.checkpoint.currentIndexChanged.connect(lambda _: self._offer_loras())
        return section

    def _build_connection(self) -> Section:
        section = Section("Backend", "backend")
        form = section.form
        self.address = _named(QLineEdit(f"127.0.0.1:{protocol.DEFAULT_PORT}"), "kld_address")
        self.address.setToolTip("Where the backend listens: host:port, or wss://host:port for TLS")
        self.connect_button = _named(QPushButton("Connect"), "kld_connect")
        self.connect_button.clicked.connect(self.connect_requested)
        form.addRow("Address", _row(self.address, self.connect_button))
        self.token = _named(QLineEdit(""), "kld_token")
        self.token.setEchoMode(QLineEdit.EchoMode.Password)
        self.token.setPlaceholderText("only if the backend asks for one")
        form.addRow("Token", self.token)
        self.ca_file = _named(QLineEdit(""), "kld_ca_file")
        self.ca_file.setPlaceholderText("only for wss:// with your own CA")
        self.ca_file.setToolTip("A PEM file of the certificate authority that signed the server certificate")
        form.addRow("CA file", self.ca_file)
        return section

    def _connect_change_signals(self) -> None:
        for signal in (
            self.prompt.textChanged, self.negative.textChanged, self.strength.valueChanged,
            self.seed.valueChanged, self.seed_lock.toggled, self.steps.valueChanged, self.cfg.valueChanged,
            self.sampler.currentIndexChanged, self.checkpoint.currentIndexChanged,
            self.lora.currentIndexChanged, self.lora_strength.valueChanged,
            self.resolution.currentIndexChanged, self.batch.valueChanged,
            self.reference_rows.model.currentIndexChanged,
        ):  # fmt: skip
            signal.connect(self.settings_changed)
        for row in self.guidance_rows.values():
            row.strength.valueChanged.connect(self.settings_changed)
            row.layer.currentIndexChanged.connect(self.settings_changed)
            row.layer.activated.connect(lambda _: self.guidance_changed.emit())

    # --- reading --------------------------------------------------------------------------------------------

    def settings(self) -> GenerationSettings:
        return GenerationSettings(
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
            resolution=float(self.resolution.currentData() or 1.0),
            batch=self.batch.value(),
            reference_model=self.reference_rows.chosen_model(),
            guidance={
                kind: ControlLayerChoice(row.layer.currentData() or "", row.strength.value())
                for kind, row in self.guidance_rows.items()
                if row.offered
            },
        )

    def connection(self) -> ConnectionSettings:
        return ConnectionSettings(
            self.address.text().strip(), self.token.text().strip(), self.ca_file.text().strip()
        )

    # --- showing --------------------------------------------------------------------------------------------

    def set_settings(self, settings: GenerationSettings) -> None:
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
        self.resolution.setCurrentIndex(max(0, self.resolution.findData(settings.resolution)))
        self.batch.setValue(_clamp(settings.batch, self.batch))
        self.reference_rows.select_model(settings.reference_model)
        for kind, row in self.guidance_rows.items():
            row.strength.setValue(_finite(settings.choice(kind).strength, 1.0))

    def set_connection(self, connection: ConnectionSettings) -> None:
        self.address.setText(connection.address)
        self.token.setText(connection.token)
        self.ca_file.setText(connection.ca_file)

    def set_status(self, text: str, state: str) -> None:
        color = STATUS_COLORS.get(state, STATUS_COLORS["off"])
        self.status.setText(f'<span style="color:{color}">●</span> {_escape(text)}')
        self.status.setProperty("state", state)
        self.status.setProperty("plain", text)

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

    def set_can_apply(self, can: bool) -> None:
        self.apply.setEnabled(can)
        self.apply_onto.setEnabled(can)

    def set_models(self, listing: ModelListing, samplers: list[str]) -> None:
        self.listing = listing
        _fill_choices(self.checkpoint, checkpoint_choices(listing))
        self._offer_loras()
        if samplers:
            _fill_pairs(
                self.sampler, None, [(s, protocol.sampler_label(s)) for s in samplers if isinstance(s, str)]
            )

    def _offer_loras(self) -> None:
        checkpoint = self.checkpoint.currentData() or ""
        _fill_choices(self.lora, lora_choices(self.listing, checkpoint))
        self.reference_rows.set_models(ipadapter_names(self.listing, checkpoint))
        self.reference_rows.set_kinds(
            protocol.family_reference_kinds(self.listing.checkpoint_family(checkpoint))
        )

    def offer_control_kinds(self, names: list[str]) -> None:
        """Shows the guidance rows of the kinds the backend can run (an older backend that lists none: all);
        a hidden row's layer is never sent."""
        for kind, row in self.guidance_rows.items():
            row.offered = not names or kind in names
            label = self.guidance_form.labelForField(row.holder)
            for widget in (label, row.holder):
                if widget is not None:
                    widget.setVisible(row.offered)

    def offer_from_image(self, available: bool) -> None:
        """Shows the "from image" buttons when the backend makes control images (an older one doesn't)."""
        for row in self.guidance_rows.values():
            if row.from_image is not None:
                row.from_image.setVisible(available)

    def set_layer_choices(self, choices: Mapping[str, list[tuple[str, str]]]) -> None:
        """The layers each kind's row offers (kind name -> (layer id, name) pairs)."""
        for kind, row in self.guidance_rows.items():
            _fill_pairs(row.layer, "None", list(choices.get(kind, [])))

    def select_guidance(self, chosen: Mapping[str, str]) -> None:
        """Shows a document's stored choices (kind name -> layer id; a kind not listed: none) without
        announcing them as the painter's new choice."""
        for kind, row in self.guidance_rows.items():
            wanted = chosen.get(kind, DEFAULT_CHOICE)
            if row.layer.currentData() != wanted:
                _select(row.layer, wanted)


@dataclass
class GuidanceRow:
    """One control kind's widgets, named kld_<kind>_layer, kld_new_<kind>, kld_<kind>_from_image (a kind
    the backend makes from the image) and kld_<kind>_strength."""

    layer: QComboBox
    new_layer: QToolButton
    strength: QDoubleSpinBox
    holder: QWidget | None = None  # the form row's field: the widgets above
    offered: bool = True  # the backend runs this kind
    from_image: QToolButton | None = None

    @classmethod
    def build(cls, kind: protocol.ControlKind) -> GuidanceRow:
        label = kind.label.lower()
        layer = _combo(f"kld_{kind.name}_layer")
        layer.addItem("None", DEFAULT_CHOICE)
        new_layer = _named(QToolButton(), f"kld_new_{kind.name}")
        new_layer.setText("+")
        if kind.input == protocol.KEYPOINTS:
            layer.setToolTip(f"A {label} layer: move its joints with the shape select tool")
            new_layer.setToolTip(f"Add a {label} layer with a figure to move joint by joint")
        else:
            layer.setToolTip(
                f"A layer the image follows as {label} (left out of the image itself, stays visible)"
            )
            new_layer.setToolTip(f"Add a {label} layer on top and select it to draw on")
        strength = _strength_spin(f"kld_{kind.name}_strength")
        strength.setToolTip(f"{kind.label} strength")
        from_image = None
        if kind.from_image:
            from_image = _named(QToolButton(), f"kld_{kind.name}_from_image")
            from_image.setIcon(_standard_icon(from_image, QStyle.StandardPixmap.SP_FileDialogContentsView))
            from_image.setToolTip(
                f"Make a {label} layer from the image (the backend computes it; the layer is yours to edit)"
            )
        buttons = [button for button in (new_layer, from_image) if button is not None]
        side = min(button.sizeHint().height() for button in buttons)
        for button in buttons:  # square: two buttons and the strength fit the docker's width
            button.setFixedWidth(side)
        return cls(layer, new_layer, strength, from_image=from_image)


def _named(widget: WidgetT, name: str) -> WidgetT:
    """The widget, named for tests and style sheets (PyQt's stubs don't list `objectName=` as a keyword)."""
    widget.setObjectName(name)
    return widget


def _standard_icon(widget: QWidget, icon: QStyle.StandardPixmap) -> QIcon:
    style = widget.style()  # a widget always has a style (the application's); the stub allows None
    return style.standardIcon(icon) if style is not None else QIcon()


def _row(*widgets: QWidget) -> QWidget:
    holder = QWidget()
    layout = QHBoxLayout(holder)
    layout.setContentsMargins(0, 0, 0, 0)
    for index, widget in enumerate(widgets):
        layout.addWidget(widget, 1 if index == 0 else 0)
    return holder


def _combo(name: str) -> QComboBox:
    combo = _named(QComboBox(), name)
    combo.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
    combo.setMinimumContentsLength(COMBO_MIN_CHARS)
    combo.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Fixed)
    return combo


def _strength_spin(name: str) -> QDoubleSpinBox:
    spin = _named(QDoubleSpinBox(), name)
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


def _fill_choices(combo: QComboBox, choices: list[Choice]) -> None:
    """The choices as items; a file the backend can't use stays listed, greyed out, saying why."""
    _fill_pairs(combo, None, [(choice.name, choice.label) for choice in choices])
    items = combo.model()
    for index, choice in enumerate(choices):
        item = items.item(index) if isinstance(items, QStandardItemModel) else None
        if item is not None:
            item.setEnabled(choice.why_not is None)
        combo.setItemData(index, choice.why_not, Qt.ItemDataRole.ToolTipRole)


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
