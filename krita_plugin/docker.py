"""Krita registration: the panel docker (one per Krita window), a result docker that shows the latest result
as big as the painter makes it (it can float onto a second screen), and menu actions painters can bind keys
to."""

from __future__ import annotations

import weakref
from typing import Any

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from .controller import Controller
from .panel import Panel
from .result_view import ResultView, result_hub
from .safe import guarded

DOCKER_ID = "krita_live_diffusion_docker"
DOCKER_TITLE = "Live Diffusion"
RESULT_DOCKER_ID = "krita_live_diffusion_result"
RESULT_DOCKER_TITLE = "Live Diffusion Result"

_dockers: weakref.WeakSet[LiveDiffusionDocker] = weakref.WeakSet()


class LiveDiffusionDocker(DockWidget):
    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(DOCKER_TITLE)
        self.setObjectName(DOCKER_ID)
        self.panel = Panel(self)
        self.setWidget(self.panel)
        self.controller = Controller(self.panel, Krita.instance(), parent=self)
        self.visibilityChanged.connect(self.controller.set_visible)
        Krita.instance().notifier().applicationClosing.connect(self.controller.shutdown)
        self.controller.start()
        _dockers.add(self)

    @guarded
    def canvasChanged(self, canvas: Any) -> None:
        # The controller follows Krita's active document itself (switches show that document's results).
        self.controller.input.poke()


class ResultDocker(DockWidget):
    """The latest result, scaled to fit whatever size the painter gives this docker."""

    def __init__(self) -> None:
        super().__init__()
        self.setWindowTitle(RESULT_DOCKER_TITLE)
        self.setObjectName(RESULT_DOCKER_ID)
        self.view = ResultView(self, "Results of the Live Diffusion panel appear here.")
        self.setWidget(self.view)
        result_hub.shown.connect(self.show_result)

    @guarded
    def show_result(self, image: Any, caption: str, aspect: float) -> None:
        self.view.set_image(image, caption, aspect or None)

    @guarded
    def canvasChanged(self, canvas: Any) -> None:
        pass


def _visible_docker() -> LiveDiffusionDocker | None:
    for docker in list(_dockers):
        if docker.isVisible():
            return docker
    return next(iter(_dockers), None)


class LiveDiffusionExtension(Extension):
    """Menu actions (Tools > Scripts), so painters can bind shortcuts to them."""

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        actions = (
            ("kld_apply", "Live Diffusion: Apply result as a new layer", self.apply),
            ("kld_apply_onto", "Live Diffusion: Apply result onto the active layer", self.apply_onto),
            ("kld_toggle_live", "Live Diffusion: Toggle live", self.toggle_live),
            ("kld_generate", "Live Diffusion: Generate", self.generate),
        )
        for name, text, slot in actions:
            window.createAction(name, text, "tools/scripts").triggered.connect(slot)

    @guarded
    def apply(self, *_: Any) -> None:
        docker = _visible_docker()
        if docker is not None:
            docker.controller.on_apply()

    @guarded
    def apply_onto(self, *_: Any) -> None:
        docker = _visible_docker()
        if docker is not None:
            docker.controller.on_apply_onto()

    @guarded
    def toggle_live(self, *_: Any) -> None:
        docker = _visible_docker()
        if docker is not None:
            docker.panel.live.toggle()

    @guarded
    def generate(self, *_: Any) -> None:
        docker = _visible_docker()
        if docker is not None:
            docker.controller.on_generate()


def register(krita_module: Any) -> None:
    app = krita_module.Krita.instance()
    app.addExtension(LiveDiffusionExtension(app))
    app.addDockWidgetFactory(
        DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, LiveDiffusionDocker)
    )
    app.addDockWidgetFactory(
        DockWidgetFactory(RESULT_DOCKER_ID, DockWidgetFactoryBase.DockRight, ResultDocker)
    )
