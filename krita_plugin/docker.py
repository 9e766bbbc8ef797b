"""Krita registration: the docker (one per Krita window) and an extension with menu actions."""

from __future__ import annotations

import weakref
from typing import Any

from krita import DockWidget, DockWidgetFactory, DockWidgetFactoryBase, Extension, Krita

from .controller import Controller
from .e2e_channel import TestControl, control_dir
from .panel import Panel
from .safe import guarded

DOCKER_ID = "krita_live_diffusion_docker"
DOCKER_TITLE = "Live Diffusion"

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
        self.test_control: TestControl | None = None
        directory = control_dir()
        if directory and not any(d.test_control for d in _dockers):  # one channel, even with several windows
            namespace = {"Krita": Krita, "docker": self, "controller": self.controller, "panel": self.panel}
            self.test_control = TestControl(directory, namespace, self)
        _dockers.add(self)

    @guarded
    def canvasChanged(self, canvas: Any) -> None:
        # The controller always works on Krita's active document; nothing to rewire per canvas.
        pass


def _visible_docker() -> LiveDiffusionDocker | None:
    for docker in list(_dockers):
        if docker.isVisible():
            return docker
    return next(iter(_dockers), None)


class LiveDiffusionExtension(Extension):
    """Menu actions (Tools > Scripts), so painters can bind shortcuts to Apply and Live."""

    def setup(self) -> None:
        pass

    def createActions(self, window: Any) -> None:
        apply = window.createAction("kld_apply", "Live Diffusion: Apply result", "tools/scripts")
        apply.triggered.connect(self.apply)
        live = window.createAction("kld_toggle_live", "Live Diffusion: Toggle live", "tools/scripts")
        live.triggered.connect(self.toggle_live)

    @guarded
    def apply(self, *_: Any) -> None:
        docker = _visible_docker()
        if docker is not None:
            docker.controller.on_apply()

    @guarded
    def toggle_live(self, *_: Any) -> None:
        docker = _visible_docker()
        if docker is not None:
            docker.panel.live.toggle()


def register(krita_module: Any) -> None:
    app = krita_module.Krita.instance()
    app.addExtension(LiveDiffusionExtension(app))
    app.addDockWidgetFactory(
        DockWidgetFactory(DOCKER_ID, DockWidgetFactoryBase.DockRight, LiveDiffusionDocker)
    )
