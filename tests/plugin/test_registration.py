from __future__ import annotations

import importlib
import sys


def test_import_outside_krita_registers_nothing(qapp) -> None:
    sys.modules.pop("krita", None)
    module = importlib.reload(importlib.import_module("krita_plugin"))
    assert module._krita is None


def test_import_inside_krita_registers_docker_and_extension(qapp, monkeypatch, tmp_path) -> None:
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
        monkeypatch.setenv("KLD_TEST_CONTROL", str(tmp_path))
        docker = factory.cls()  # what Krita does when it builds a window
        try:
            assert docker.windowTitle() == "Live Diffusion"
            assert (tmp_path / "ready").exists()  # the test channel opens only on request
            (tmp_path / "1.cmd.py").write_text("result = panel.objectName()")
            docker.test_control.poll()
            assert (tmp_path / "1.out.json").read_text() == '{"ok": true, "result": "kld_panel"}'
            (tmp_path / "2.cmd.py").write_text("raise ValueError('x')")
            docker.test_control.poll()
            assert '"ok": false' in (tmp_path / "2.out.json").read_text()
        finally:
            docker.controller.shutdown()
    finally:
        sys.modules.pop("krita", None)


def test_guarded_reports_to_the_test_log(monkeypatch, tmp_path) -> None:
    from krita_plugin.safe import guarded

    monkeypatch.setenv("KLD_TEST_CONTROL", str(tmp_path))

    @guarded
    def broken() -> None:
        raise KeyError("nope")

    assert broken() is None
    assert "KeyError" in (tmp_path / "errors.log").read_text()
