"""The panel's References section: add a reference from the active layer or from an image file, and per
reference its source, kind (reference / style / composition), strength and start/end. Widgets only; the
controller keeps the references in the document (references.py).

Names for tests and scripts: add_reference_layer, add_reference_file, reference_model, and per row
reference_source_<i> (a layer picker, or a label for a file), reference_kind_<i>, reference_strength_<i>,
reference_start_<i>, reference_end_<i>, remove_reference_<i>.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, cast

from .qt import (
    QComboBox,
    QDoubleSpinBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QPushButton,
    QSizePolicy,
    QSlider,
    Qt,
    QToolButton,
    QVBoxLayout,
    QWidget,
    pyqtSignal,
)
from .references import DEFAULT_STRENGTH, KIND_LABELS, ReferenceEntry

IMAGE_FILTER = "Images (*.png *.jpg *.jpeg *.webp *.bmp *.tif *.tiff *.gif)"
SERVER_PICK = "Server's pick"


@dataclass
class ReferenceRow:
    entry: ReferenceEntry  # its source; the numbers are read from the widgets
    source: QComboBox | QLabel
    kind: QComboBox
    strength: QSlider
    start: QDoubleSpinBox
    end: QDoubleSpinBox
    remove: QToolButton
    holder: QWidget

    def read(self) -> ReferenceEntry:
        layer_id = self.source.currentData() if isinstance(self.source, QComboBox) else ""
        start, end = round(self.start.value(), 3), round(self.end.value(), 3)
        return ReferenceEntry(
            layer_id=layer_id or self.entry.layer_id,
            path=self.entry.path,
            kind=self.kind.currentData() or "reference",
            strength=self.strength.value() / 100.0,
            start=min(start, end),
            end=end,
        )


class ReferenceRows(QWidget):
    add_layer_clicked = pyqtSignal()
    file_chosen = pyqtSignal(str)  # a picture file the painter picked in the file dialog
    changed = pyqtSignal()  # the painter edited a row (read them with entries())
    remove_clicked = pyqtSignal(int)  # the row's index

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.kinds: tuple[str, ...] | None = None  # those the chosen checkpoint takes; None: all
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        buttons = QHBoxLayout()
        self.add_layer = QPushButton("From layer")
        self.add_layer.setObjectName("kld_add_reference_layer")
        self.add_layer.setToolTip("Use the active layer as a reference image (hidden or not)")
        self.add_layer.clicked.connect(self.add_layer_clicked)
        self.add_file = QPushButton("From file…")
        self.add_file.setObjectName("kld_add_reference_file")
        self.add_file.setToolTip("Use a picture file as a reference image")
        self.add_file.clicked.connect(self._choose_file)
        buttons.addWidget(self.add_layer, 1)
        buttons.addWidget(self.add_file, 1)
        layout.addLayout(buttons)
        self.model_row = QWidget(self)
        model_layout = QHBoxLayout(self.model_row)
        model_layout.setContentsMargins(0, 0, 0, 0)
        self.model = QComboBox()
        self.model.setObjectName("kld_reference_model")
        self.model.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
        self.model.setMinimumContentsLength(3)
        self.model.addItem(SERVER_PICK, "")
        self.model.setToolTip("The IP-Adapter file (the server's pick fits the model's family)")
        model_layout.addWidget(QLabel("IP-Adapter"))
        model_layout.addWidget(self.model, 1)
        layout.addWidget(self.model_row)
        self.model_offered = False  # the server lists its IP-Adapter files (an older one doesn't)
        self.model_row.setVisible(False)
        self.rows_box = QVBoxLayout()
        self.rows_box.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.rows_box)
        self.rows: list[ReferenceRow] = []
        self._shown: tuple[object, ...] = ()

    # --- reading --------------------------------------------------------------------------------------------

    def entries(self) -> list[ReferenceEntry]:
        return [row.read() for row in self.rows]

    def chosen_model(self) -> str:
        return (self.model.currentData() or "") if self.model_offered else ""

    # --- showing --------------------------------------------------------------------------------------------

    def set_models(self, names: list[str] | None) -> None:
        """The server's IP-Adapter files; None (a server that lists no such kind) hides the picker."""
        self.model_offered = names is not None
        self.model_row.setVisible(self.model_offered)
        wanted = [("", SERVER_PICK)] + [(name, name) for name in names or []]
        if [(self.model.itemData(i), self.model.itemText(i)) for i in range(self.model.count())] == wanted:
            return
        current = self.model.currentData()
        self.model.blockSignals(True)
        try:
            self.model.clear()
            for data, text in wanted:
                self.model.addItem(text, data)
        finally:
            self.model.blockSignals(False)
        self.select_model(current or "")

    def select_model(self, name: str) -> None:
        index = self.model.findData(name)
        if index < 0 and name:
            self.model.addItem(f"{name} (not on the server)", name)
            index = self.model.count() - 1
        self.model.setCurrentIndex(max(0, index))

    def set_kinds(self, kinds: tuple[str, ...] | None) -> None:
        """The kinds the chosen checkpoint takes (SD 1.5: reference only); None: all (the server decides).
        The others stay listed, greyed out, so a stored choice still shows what it is."""
        self.kinds = kinds
        for row in self.rows:
            self._offer_kinds(row.kind)

    def _offer_kinds(self, combo: QComboBox) -> None:
        items = cast("Any", combo.model())
        for index in range(combo.count()):
            name = combo.itemData(index)
            offered = self.kinds is None or name in self.kinds
            item = items.item(index)
            item.setEnabled(offered)
            item.setToolTip("" if offered else "Not for the chosen checkpoint's model family")

    def set_references(
        self, entries: list[ReferenceEntry], layers: list[tuple[str, str]], missing: set[str]
    ) -> None:
        """Shows the document's references (`layers`: what a layer row may pick; `missing`: files that can't
        be read). Rebuilt only when something shown changed, so a slider being dragged is left alone."""
        shown = (tuple(entries), tuple(layers), tuple(sorted(missing)))
        if shown == self._shown:
            return
        self._shown = shown
        for row in self.rows:
            self.rows_box.removeWidget(row.holder)
            row.holder.setParent(None)  # pyright: ignore[reportCallIssue, reportArgumentType]
            row.holder.deleteLater()
        self.rows = [self._row(i, entry, layers, entry.path in missing) for i, entry in enumerate(entries)]
        for row in self.rows:
            self.rows_box.addWidget(row.holder)

    def _edited(self) -> None:
        # What the rows show now is what the document will hold: the next set_references finds nothing to
        # rebuild (a rebuild would take the slider from under the painter's pointer).
        if self._shown:
            self._shown = (tuple(self.entries()), *self._shown[1:])
        self.changed.emit()

    def _choose_file(self) -> None:
        path, _ = QFileDialog.getOpenFileName(self, "Reference image", "", IMAGE_FILTER)
        if path:
            self.file_chosen.emit(path)

    def _row(
        self, index: int, entry: ReferenceEntry, layers: list[tuple[str, str]], missing: bool
    ) -> ReferenceRow:
        holder = QWidget(self)
        layout = QVBoxLayout(holder)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(1)
        source: QComboBox | QLabel
        if entry.layer_id:
            source = QComboBox()
            source.setSizeAdjustPolicy(QComboBox.SizeAdjustPolicy.AdjustToMinimumContentsLengthWithIcon)
            source.setMinimumContentsLength(3)
            for layer_id, name in layers:
                source.addItem(name, layer_id)
            source.setCurrentIndex(max(0, source.findData(entry.layer_id)))
            source.setToolTip("The layer whose pixels are the reference")
            source.activated.connect(lambda *_: self._edited())
        else:
            name = os.path.basename(entry.path)
            source = QLabel(f"{name} (missing)" if missing else name)
            source.setToolTip(entry.path + ("\nThe file can't be read: it is left out." if missing else ""))
        source.setObjectName(f"kld_reference_source_{index}")
        source.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        kind = QComboBox()
        kind.setObjectName(f"kld_reference_kind_{index}")
        for name, label in KIND_LABELS.items():
            kind.addItem(label, name)
        kind.setCurrentIndex(max(0, kind.findData(entry.kind)))
        self._offer_kinds(kind)
        kind.setToolTip("Reference: look and subject; Style: style only; Composition: layout only")
        kind.activated.connect(lambda *_: self._edited())
        remove = QToolButton()
        remove.setObjectName(f"kld_remove_reference_{index}")
        remove.setText("×")
        remove.setToolTip("Remove this reference (a layer stays as it is)")
        remove.clicked.connect(lambda *_, i=index: self.remove_clicked.emit(i))
        top = QHBoxLayout()
        top.addWidget(source, 1)
        top.addWidget(kind)
        top.addWidget(remove)
        layout.addLayout(top)
        strength = QSlider(Qt.Orientation.Horizontal)
        strength.setObjectName(f"kld_reference_strength_{index}")
        strength.setRange(0, 200)
        strength.setValue(round(entry.strength * 100))
        strength.setToolTip(f"Strength (starts at {DEFAULT_STRENGTH:.0%}: the prompt still counts)")
        value = QLabel(f"{strength.value()}%")
        value.setFixedWidth(value.fontMetrics().horizontalAdvance("200%") + 4)
        strength.valueChanged.connect(lambda v: value.setText(f"{v}%"))
        strength.valueChanged.connect(lambda *_: self._edited())
        start, end = (
            _fraction(f"kld_reference_start_{index}", entry.start),
            _fraction(f"kld_reference_end_{index}", entry.end),
        )
        for spin in (start, end):
            spin.valueChanged.connect(lambda *_: self._edited())
        start.setToolTip("Acts from this part of the schedule on (0 = the first step)")
        end.setToolTip("Acts until this part of the schedule (1 = the last step)")
        bottom = QHBoxLayout()
        bottom.addWidget(strength, 1)
        bottom.addWidget(value)
        bottom.addWidget(start)
        bottom.addWidget(end)
        layout.addLayout(bottom)
        return ReferenceRow(entry, source, kind, strength, start, end, remove, holder)


def _fraction(name: str, value: float) -> QDoubleSpinBox:
    spin = QDoubleSpinBox()
    spin.setObjectName(name)
    spin.setRange(0.0, 1.0)
    spin.setSingleStep(0.05)
    spin.setDecimals(2)
    spin.setValue(value)
    return spin
