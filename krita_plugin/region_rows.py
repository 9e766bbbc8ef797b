"""The panel's Regions section: "Add region" and, per region, its layer's name, a prompt box and a remove
button. Widgets only; the controller stores what the painter types (regions.py).

Names for tests and scripts: add_region, and per row (in the document's order) region_label_<i>,
region_prompt_<i>, remove_region_<i>.
"""

from __future__ import annotations

from dataclasses import dataclass

from .qt import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QPushButton,
    QSizePolicy,
    QToolButton,
    QVBoxLayout,
    QWidget,
    pyqtSignal,
)
from .regions import MARKER, Region


@dataclass
class RegionRow:
    layer_id: str
    name: str
    label: QLabel
    prompt: QLineEdit
    remove: QToolButton
    holder: QWidget


class RegionRows(QWidget):
    add_clicked = pyqtSignal()
    prompt_edited = pyqtSignal(str, str)  # region layer id, its prompt as typed
    remove_clicked = pyqtSignal(str)  # region layer id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        self.add = QPushButton("Add region")
        self.add.setObjectName("kld_add_region")
        self.add.setToolTip(
            "Make the active layer or group a region: its prompt applies where the layer has paint "
            "(the layer itself is not changed)"
        )
        self.add.clicked.connect(self.add_clicked)
        layout.addWidget(self.add)
        self.hint = QLabel("No regions: the prompt applies everywhere.")
        self.hint.setWordWrap(True)
        self.hint.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        layout.addWidget(self.hint)
        self.rows_box = QVBoxLayout()
        self.rows_box.setContentsMargins(0, 0, 0, 0)
        layout.addLayout(self.rows_box)
        self.rows: list[RegionRow] = []

    def set_regions(self, regions: list[Region]) -> None:
        """Shows the document's regions: rebuilds the rows when the regions or their layers' names changed,
        else only updates prompts the painter is not typing in."""
        if [(r.layer_id, r.name) for r in regions] != [(row.layer_id, row.name) for row in self.rows]:
            self._rebuild(regions)
            return
        for row, region in zip(self.rows, regions, strict=True):
            if row.prompt.text() != region.prompt and not row.prompt.hasFocus():
                row.prompt.setText(region.prompt)

    def prompt_box(self, layer_id: str) -> QLineEdit | None:
        return next((row.prompt for row in self.rows if row.layer_id == layer_id), None)

    def _rebuild(self, regions: list[Region]) -> None:
        for row in self.rows:
            self.rows_box.removeWidget(row.holder)
            row.holder.setParent(None)  # pyright: ignore[reportCallIssue, reportArgumentType]
            row.holder.deleteLater()
        self.rows = [self._row(index, region) for index, region in enumerate(regions)]
        for row in self.rows:
            self.rows_box.addWidget(row.holder)
        self.hint.setVisible(not regions)

    def _row(self, index: int, region: Region) -> RegionRow:
        holder = QWidget(self)
        layout = QVBoxLayout(holder)
        layout.setContentsMargins(0, 2, 0, 2)
        layout.setSpacing(1)
        top = QHBoxLayout()
        label = QLabel(f"{MARKER} {region.name}")
        label.setObjectName(f"kld_region_label_{index}")
        label.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Preferred)
        label.setToolTip(f"The region of layer “{region.name}”: where it has paint")
        remove = QToolButton()
        remove.setObjectName(f"kld_remove_region_{index}")
        remove.setText("×")
        remove.setToolTip("Remove this region (the layer stays as it is)")
        remove.clicked.connect(lambda *_, uid=region.layer_id: self.remove_clicked.emit(uid))
        top.addWidget(label, 1)
        top.addWidget(remove)
        layout.addLayout(top)
        prompt = QLineEdit(region.prompt)
        prompt.setObjectName(f"kld_region_prompt_{index}")
        prompt.setPlaceholderText("what this region shows")
        prompt.setToolTip("Applies inside the region, joined with the main prompt")
        prompt.textEdited.connect(lambda text, uid=region.layer_id: self.prompt_edited.emit(uid, text))
        layout.addWidget(prompt)
        return RegionRow(region.layer_id, region.name, label, prompt, remove, holder)
