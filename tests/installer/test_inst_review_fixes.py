"""Regression tests for installer bugs found in review."""

from __future__ import annotations

import errno
import pathlib
from pathlib import Path

import pytest
from installer_testkit import USER_KRITARC

from installer import cli, kritarc

PLUGIN = "krita_live_diffusion"


def pykrita(home: Path) -> Path:
    return home / ".local" / "share" / "krita" / "pykrita"


def kritarc_path(home: Path) -> Path:
    return home / ".config" / "kritarc"


def install(repo: Path, venv: Path, *extra: str) -> int:
    return cli.main(["--skip-venv", "--skip-models", "--offline", "--venv", str(venv), *extra], repo=repo)


def test_uninstall_keeps_an_enable_key_the_painter_had_set_before(
    fake_repo: Path, home: Path, websockets_venv: Path
) -> None:
    # The painter enabled the plugin by hand (Krita's plugin manager) before ever running install.py.
    original = USER_KRITARC.replace(b"[python]\n", b"[python]\nenable_krita_live_diffusion=true\n")
    assert original != USER_KRITARC
    kritarc_path(home).parent.mkdir(parents=True)
    kritarc_path(home).write_bytes(original)
    assert install(fake_repo, websockets_venv) == 0
    assert kritarc_path(home).read_bytes() == original  # nothing to change
    assert install(fake_repo, websockets_venv, "--uninstall") == 0
    assert kritarc_path(home).read_bytes() == original  # and nothing of the painter's is taken away


def test_a_failed_kritarc_write_leaves_the_file_intact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "kritarc"
    path.write_bytes(USER_KRITARC)

    def disk_full(self: Path, data: bytes) -> int:
        with open(self, "wb") as out:  # opening truncates, as the real write does; then the disk is full
            out.write(data[:3])
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pathlib.Path, "write_bytes", disk_full)
    with pytest.raises(OSError):
        kritarc.enable(path, PLUGIN)
    assert path.read_bytes() == USER_KRITARC  # all the painter's Krita settings are still there


def test_install_and_uninstall_leave_a_linked_plugin_folder_alone(
    fake_repo: Path, home: Path, websockets_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A developer's set-up: pykrita/krita_live_diffusion is a link to a working copy of the plugin.
    working_copy = home / "src" / "krita_plugin"
    working_copy.mkdir(parents=True)
    (working_copy / "__init__.py").write_text("# my work in progress\n", encoding="utf-8")
    (working_copy / "panel.py").write_text("# not committed yet\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in working_copy.iterdir()}
    pykrita(home).mkdir(parents=True)
    (pykrita(home) / PLUGIN).symlink_to(working_copy, target_is_directory=True)

    install(fake_repo, websockets_venv)
    assert "link" in capsys.readouterr().out
    install(fake_repo, websockets_venv, "--uninstall")
    assert (pykrita(home) / PLUGIN).is_symlink()
    assert {p.name: p.read_bytes() for p in working_copy.iterdir()} == before


def test_the_start_command_printed_on_windows_pastes_into_cmd() -> None:
    repo = r"C:\Users\Jane Doe\krita-live-diffusion"
    python = repo + r"\.venv\Scripts\python.exe"
    line = cli.start_hint(repo, [python, "-m", "backend"], windows=True)
    # cmd.exe knows only double quotes; single quotes would become part of the path.
    assert line == f'cd /d "{repo}" && "{python}" -m backend'
    assert cli.start_hint(
        "/home/jane/kld", ["/home/jane/kld/.venv/bin/python", "-m", "backend"], windows=False
    ) == ("cd /home/jane/kld && /home/jane/kld/.venv/bin/python -m backend")


def test_a_profile_under_a_linked_folder_is_still_installed(
    fake_repo: Path, tmp_path: Path, websockets_venv: Path
) -> None:
    # Only a link at the plugin folder itself means "not ours": dotfiles often link ~/.local/share elsewhere.
    real = tmp_path / "elsewhere"
    (real / "pykrita").mkdir(parents=True)
    linked = tmp_path / "krita"
    linked.symlink_to(real, target_is_directory=True)
    rc = tmp_path / "kritarc"
    assert install(fake_repo, websockets_venv, "--krita-dir", str(linked), "--kritarc", str(rc)) == 0
    assert (real / "pykrita" / PLUGIN / "__init__.py").is_file()
    assert (
        install(fake_repo, websockets_venv, "--krita-dir", str(linked), "--kritarc", str(rc), "--uninstall")
        == 0
    )
    assert not (real / "pykrita" / PLUGIN).exists()


def test_an_install_record_that_is_not_an_object_is_ignored(tmp_path: Path) -> None:
    from installer.plugin import RECORD_FILE, read_record

    (tmp_path / RECORD_FILE).write_text("[1, 2, 3]\n", encoding="utf-8")
    assert read_record(tmp_path) is None
    (tmp_path / RECORD_FILE).write_bytes(b"\xff\xfe not utf-8")
    assert read_record(tmp_path) is None
