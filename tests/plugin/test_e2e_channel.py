"""The end-to-end tests' control channel (tests/e2e/e2e_channel.py), run against the fake Krita; and proof
that painters' installs get no such channel."""

from __future__ import annotations

import ast
import importlib
import json
import sys
from pathlib import Path

import pytest

from installer.plugin import collect_files
from installer.vendor import VendorSource
from tests.e2e import e2e_channel
from tests.plugin import fake_krita

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def docker(qapp):
    fake_krita.Krita._instance = None
    fake_krita.install_module()
    try:
        for name in [m for m in sys.modules if m.startswith("krita_plugin.docker")]:
            del sys.modules[name]
        importlib.reload(importlib.import_module("krita_plugin"))
        app = fake_krita.Krita.instance()
        built = app.docker_factories[0].cls()
        try:
            yield built
        finally:
            built.controller.shutdown()
    finally:
        sys.modules.pop("krita", None)


def answer(folder: Path, stem: str) -> dict:
    return json.loads((folder / f"{stem}.out.json").read_text(encoding="utf-8"))


def test_the_channel_opens_once_the_docker_exists_and_runs_snippets_in_its_scope(docker, tmp_path) -> None:
    app = fake_krita.Krita.instance()
    channel = e2e_channel.TestChannel(str(tmp_path), app, plugin_package="krita_plugin")
    try:
        (tmp_path / "1.cmd.py").write_text("result = [panel.objectName(), controller is docker.controller]")
        channel.poll()
        assert not (tmp_path / "ready").exists()  # no docker yet: nothing runs
        assert (tmp_path / "1.cmd.py").exists()
        app.docks.append(docker)
        channel.poll()
        assert (tmp_path / "ready").exists()
        assert answer(tmp_path, "1") == {"ok": True, "result": ["kld_panel", True]}
        (tmp_path / "2.cmd.py").write_text("raise ValueError('x')")
        channel.poll()
        reply = answer(tmp_path, "2")
        assert reply["ok"] is False and "ValueError: x" in reply["error"]
    finally:
        channel.close()


def test_errors_the_plugin_catches_go_to_the_channels_log(docker, tmp_path) -> None:
    from krita_plugin.safe import guarded

    @guarded
    def broken() -> None:
        raise KeyError("nope")

    channel = e2e_channel.TestChannel(
        str(tmp_path), fake_krita.Krita.instance(), plugin_package="krita_plugin"
    )
    channel.poll()
    try:
        broken()
    finally:
        channel.close()
    assert "KeyError: 'nope'" in (tmp_path / "errors.log").read_text(encoding="utf-8")
    broken()  # once closed, the channel hears nothing more
    assert (tmp_path / "errors.log").read_text(encoding="utf-8").count("--- ") == 1


def test_painters_installs_carry_no_test_hooks() -> None:
    files, _ = collect_files(REPO, VendorSource(files={}, version="0", origin="test"))
    assert "__init__.py" in files and "docker.py" in files
    names = [rel for rel in files if "e2e" in rel or "channel" in rel]
    assert names == []
    for rel, data in files.items():
        if rel.endswith(".py") and not rel.startswith("vendor/"):
            text = data.decode("utf-8")
            assert e2e_channel.CONTROL_ENV not in text, rel
            calls = {node.func.id for node in ast.walk(ast.parse(text)) if isinstance(node, ast.Call)
                     and isinstance(node.func, ast.Name)}  # fmt: skip
            assert not calls & {"exec", "eval", "compile"}, rel
