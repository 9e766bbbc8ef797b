from __future__ import annotations

import importlib
import sys


def test_import_outside_krita_registers_nothing(qapp) -> None:
    sys.modules.pop("krita", None)
    module = importlib.reload(importlib.import_module("krita_plugin"))
    assert module._krita is None


def test_import_inside_krita_registers_docker_and_extension(qapp) -> None:
    from tests.plugin import fake_krita

    fake_krita.Krita._instance = None
    krita = fake_krita.install_module()
    try:
        for name in [m for m in sys.modules if m.startswith("krita_plugin.docker")]:
            del sys.modules[name]
        importlib.reload(importlib.import_module("krita_plugin"))
        app = krita.Krita.instance()
        factory, result_factory = app.docker_factories
        assert factory.docker_id == "krita_live_diffusion_docker" and len(app.extensions) == 1
        assert result_factory.docker_id == "krita_live_diffusion_result"
        docker = factory.cls()  # what Krita does when it builds a window
        try:
            assert docker.windowTitle() == "Live Diffusion"
            assert docker.panel.objectName() == "kld_panel"
        finally:
            docker.controller.shutdown()
    finally:
        sys.modules.pop("krita", None)


def test_guarded_hands_the_traceback_to_listeners() -> None:
    from krita_plugin import safe

    heard: list[tuple[str, str]] = []
    listener = lambda where, details: heard.append((where, details))  # noqa: E731

    @safe.guarded
    def broken() -> None:
        raise KeyError("nope")

    safe.add_error_listener(listener)
    try:
        assert broken() is None
    finally:
        safe.remove_error_listener(listener)
    assert broken() is None  # a listener removed hears nothing more
    [(where, details)] = heard
    assert where.endswith("broken") and "KeyError: 'nope'" in details
