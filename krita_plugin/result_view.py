"""Where the painter sees results: a view that scales the latest result to fit (in the panel, and in a docker
of its own that can be made big or floated onto a second screen), and a strip of the recent results.

Results are never put into the document to be seen: the painter's sketch and guidance layers stay in view on
the canvas while the result sits beside them.
"""

from __future__ import annotations

from collections.abc import Callable

from .compose import bgra_image
from .qt import (
    QColor,
    QIcon,
    QImage,
    QListView,
    QListWidget,
    QListWidgetItem,
    QObject,
    QPainter,
    QPixmap,
    QRectF,
    QSize,
    QSizePolicy,
    Qt,
    QWidget,
    pyqtSignal,
)

THUMBNAIL = 56


def entry_image(pixels: bytes, width: int, height: int) -> QImage:
    return bgra_image(pixels, width, height)


def fit_rect(image_w: int, image_h: int, box_w: int, box_h: int, aspect: float | None = None) -> QRectF:
    """The largest rectangle with the image's aspect (or `aspect`) centred in the box."""
    ratio = aspect if aspect else image_w / max(1, image_h)
    w = min(float(box_w), box_h * ratio)
    h = w / ratio
    return QRectF((box_w - w) / 2, (box_h - h) / 2, w, h)


class ResultView(QWidget):
    """Paints one image scaled to fit, keeping the document rectangle's aspect (results may come at the
    model's working size), over a checkerboard where it is transparent."""

    clicked = pyqtSignal()

    def __init__(self, parent: QWidget | None = None, placeholder: str = "Results appear here.") -> None:
        super().__init__(parent)
        self.setObjectName("kld_result_view")
        self.placeholder = placeholder
        self.image: QImage | None = None
        self.caption = ""
        self._aspect: float | None = None
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(64, 64)

    def sizeHint(self) -> QSize:
        return QSize(240, 180)

    def set_image(self, image: QImage | None, caption: str = "", aspect: float | None = None) -> None:
        self.image = image
        self.caption = caption
        self._aspect = aspect
        self.setToolTip(caption)
        self.update()

    def mouseReleaseEvent(self, event: object) -> None:
        self.clicked.emit()

    def paintEvent(self, event: object) -> None:
        painter = QPainter(self)
        try:
            painter.fillRect(self.rect(), self.palette().window())
            if self.image is None or self.image.isNull():
                painter.setPen(self.palette().placeholderText().color())
                painter.drawText(
                    self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self.placeholder
                )
                return
            target = fit_rect(
                self.image.width(), self.image.height(), self.width(), self.height(), self._aspect
            )
            _checkerboard(painter, target)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform, True)
            painter.drawImage(target, self.image)
        finally:
            painter.end()


def _checkerboard(painter: QPainter, target: QRectF, cell: int = 8) -> None:
    painter.fillRect(target, QColor(204, 204, 204))
    dark = QColor(153, 153, 153)
    x0, y0 = int(target.left()), int(target.top())
    for y in range(y0, int(target.bottom()), cell):
        for x in range(x0 + ((y - y0) // cell % 2) * cell, int(target.right()), 2 * cell):
            painter.fillRect(
                QRectF(x, y, min(cell, target.right() - x), min(cell, target.bottom() - y)), dark
            )


class HistoryStrip(QListWidget):
    """Thumbnails of the document's recent results, newest first; a click shows one."""

    picked = pyqtSignal(str)  # job id

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("kld_history")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setIconSize(QSize(THUMBNAIL, THUMBNAIL))
        self.setFixedHeight(THUMBNAIL + 26)  # the scrollbar's room: no layout jump when it appears
        self.setHorizontalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAsNeeded)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setSizePolicy(QSizePolicy.Policy.Ignored, QSizePolicy.Policy.Fixed)
        self.itemClicked.connect(lambda item: self.picked.emit(str(item.data(Qt.ItemDataRole.UserRole))))
        self._shown: list[str] = []

    def set_entries(
        self, entries: list[tuple[str, str]], image_for: Callable[[str], QImage | None], selected: str = ""
    ) -> None:
        """(job id, tooltip) newest first; rebuilt only when the list changed (only then asking image_for)."""
        ids = [job_id for job_id, _ in entries]
        if ids != self._shown:
            self.blockSignals(True)
            try:
                self.clear()
                for job_id, tooltip in entries:
                    image = image_for(job_id)
                    icon = QIcon(_thumbnail(image)) if image is not None else QIcon()
                    item = QListWidgetItem(icon, "")
                    item.setData(Qt.ItemDataRole.UserRole, job_id)
                    item.setToolTip(tooltip)
                    self.addItem(item)
            finally:
                self.blockSignals(False)
            self._shown = ids
        for row in range(self.count()):
            item = self.item(row)
            if item is not None:  # None only past count()
                item.setSelected(item.data(Qt.ItemDataRole.UserRole) == selected)


def _thumbnail(image: QImage) -> QPixmap:
    scaled = image.scaled(
        THUMBNAIL, THUMBNAIL, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation
    )
    return QPixmap.fromImage(scaled)


class ResultHub(QObject):
    """Publishes what the active panel shows to every result docker (one per Krita window)."""

    shown = pyqtSignal(object, str, float)  # QImage or None, caption, aspect (0: the image's own)


result_hub = ResultHub()
