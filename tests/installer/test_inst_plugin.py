"""Plugin installation into a throw-away HOME: files in place, kritarc, idempotence, clean uninstall."""

from __future__ import annotations

import compileall
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from installer_testkit import USER_KRITARC

from installer import cli
from installer.krita_paths import platform_profiles, target_profiles
from installer.vendor import is_vendored_file

PLUGIN = "krita_live_diffusion"


def pykrita(home: Path) -> Path:
    return home / ".local" / "share" / "krita" / "pykrita"


def kritarc_path(home: Path) -> Path:
    return home / ".config" / "kritarc"


def install(repo: Path, venv: Path, *extra: str) -> int:
    return cli.main(["--skip-venv", "--skip-models", "--offline", "--venv", str(venv), *extra], repo=repo)


def snapshot(root: Path) -> dict[str, tuple[int, bytes]]:
    return {
        str(p.relative_to(root)): (p.stat().st_mtime_ns, p.read_bytes())
        for p in root.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def user_profile(home: Path) -> Path:
    """A Krita profile that is already in use: another plugin and a kritarc full of settings."""
    other = pykrita(home) / "other_plugin"
    other.mkdir(parents=True)
    (other / "__init__.py").write_text("# someone else's plugin\n", encoding="utf-8")
    (pykrita(home) / "other_plugin.desktop").write_text("[Desktop Entry]\n", encoding="utf-8")
    kritarc_path(home).parent.mkdir(parents=True)
    kritarc_path(home).write_bytes(USER_KRITARC)
    return home


def test_install_puts_every_file_in_place(
    fake_repo: Path, user_profile: Path, websockets_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install(fake_repo, websockets_venv) == 0
    out = capsys.readouterr().out
    target = pykrita(user_profile) / PLUGIN
    assert f"plugin: installed to {target}" in out
    assert f"kritarc: enabled {PLUGIN} in {kritarc_path(user_profile)}" in out
    assert (pykrita(user_profile) / f"{PLUGIN}.desktop").read_text() == (
        fake_repo / "krita_plugin" / f"{PLUGIN}.desktop"
    ).read_text()
    assert (target / "__init__.py").is_file() and (target / "ui" / "__init__.py").is_file()
    assert not (target / f"{PLUGIN}.desktop").exists()  # the .desktop file sits beside the package only
    assert not (target / "__pycache__").exists()
    assert (target / "protocol" / "__init__.py").read_text() == "VERSION = 1\n"
    assert (target / "protocol" / "messages.py").is_file()
    vendored = target / "vendor" / "websockets"
    assert (vendored / "__init__.py").is_file() and (vendored / "sync" / "client.py").is_file()
    assert not [p for p in vendored.rglob("*") if p.suffix in (".so", ".pyd", ".c")]
    assert (target / "vendor" / "websockets.LICENSE").is_file()
    assert (target / ".install-record.json").is_file()
    assert (pykrita(user_profile) / "other_plugin" / "__init__.py").is_file()


def test_the_plugin_learns_the_command_that_starts_this_backend(
    fake_repo: Path, user_profile: Path, websockets_venv: Path
) -> None:
    """A painter whose backend is not running is told the command that works for this install (the venv's
    Python), not a bare `python -m backend` that fails outside it."""
    from krita_plugin.painter_words import GENERIC_START, start_command

    assert install(fake_repo, websockets_venv) == 0
    record = pykrita(user_profile) / PLUGIN / ".install-record.json"
    command = start_command.__wrapped__(record)
    assert str(websockets_venv) in command and command.endswith("-m backend")
    assert command.startswith("cd ")
    assert start_command.__wrapped__(record.with_name("missing.json")) == GENERIC_START


def test_install_leaves_other_kritarc_settings_untouched(
    fake_repo: Path, user_profile: Path, websockets_venv: Path
) -> None:
    install(fake_repo, websockets_venv)
    expected = USER_KRITARC.replace(
        b"enable_other_plugin=true\n", b"enable_other_plugin=true\nenable_krita_live_diffusion=true\n"
    )
    assert kritarc_path(user_profile).read_bytes() == expected


@pytest.mark.parametrize("interpreter", ["test", "system"])
def test_vendored_websockets_imports_from_the_plugin_folder(
    fake_repo: Path, home: Path, websockets_venv: Path, interpreter: str
) -> None:
    python = sys.executable if interpreter == "test" else "/usr/bin/python3"
    if not Path(python).exists():
        pytest.skip("no system Python (the one Debian's Krita embeds)")
    install(fake_repo, websockets_venv)
    vendor = pykrita(home) / PLUGIN / "vendor"
    # -I -S: no site-packages, so the only websockets to be found is the vendored one.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import websockets, websockets.sync.client, "
        "websockets.asyncio.client; assert websockets.__file__.startswith(sys.argv[1]), websockets.__file__; "
        "print(websockets.version.version)"
    )
    result = subprocess.run([python, "-I", "-S", "-c", code, str(vendor)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip().startswith("17.")


def test_second_run_rewrites_nothing(
    fake_repo: Path, user_profile: Path, websockets_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(fake_repo, websockets_venv)
    before = snapshot(user_profile)
    capsys.readouterr()
    assert install(fake_repo, websockets_venv) == 0
    out = capsys.readouterr().out
    assert f"plugin: up to date ({pykrita(user_profile) / PLUGIN})" in out
    assert "kritarc: up to date" in out
    assert snapshot(user_profile) == before  # same bytes and same mtimes: nothing was rewritten


def test_changed_sources_are_updated_and_stale_files_removed(
    fake_repo: Path, home: Path, websockets_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(fake_repo, websockets_venv)
    (fake_repo / "krita_plugin" / "extension.py").write_text("NAME = 'changed'\n", encoding="utf-8")
    (fake_repo / "krita_plugin" / "ui" / "__init__.py").unlink()
    (fake_repo / "krita_plugin" / "ui").rmdir()
    capsys.readouterr()
    install(fake_repo, websockets_venv)
    assert "(0 added, 1 changed, 1 removed)" in capsys.readouterr().out
    target = pykrita(home) / PLUGIN
    assert (target / "extension.py").read_text() == "NAME = 'changed'\n"
    assert not (target / "ui").exists()


def test_uninstall_removes_only_what_was_installed(
    fake_repo: Path, user_profile: Path, websockets_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = snapshot(user_profile)
    install(fake_repo, websockets_venv)
    # Krita ran the plugin: Python left bytecode caches beside our files.
    compileall.compile_dir(str(pykrita(user_profile) / PLUGIN), quiet=1)
    capsys.readouterr()
    assert cli.main(["--uninstall"], repo=fake_repo) == 0
    out = capsys.readouterr().out
    assert "plugin: removed" in out and "kritarc: removed enable_krita_live_diffusion" in out
    assert not (pykrita(user_profile) / PLUGIN).exists()
    assert not (pykrita(user_profile) / f"{PLUGIN}.desktop").exists()
    after = snapshot(user_profile)
    assert {k: v[1] for k, v in after.items()} == {k: v[1] for k, v in before.items()}
    assert kritarc_path(user_profile).read_bytes() == USER_KRITARC


def test_uninstall_without_a_kritarc_before_removes_the_one_we_created(
    fake_repo: Path, home: Path, websockets_venv: Path
) -> None:
    install(fake_repo, websockets_venv)
    assert kritarc_path(home).read_bytes() == b"[python]\nenable_krita_live_diffusion=true\n"
    cli.main(["--uninstall"], repo=fake_repo)
    assert not kritarc_path(home).exists()
    assert list(pykrita(home).iterdir()) == []


def test_uninstall_keeps_files_the_user_added(
    fake_repo: Path, home: Path, websockets_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    install(fake_repo, websockets_venv)
    notes = pykrita(home) / PLUGIN / "my-notes.txt"
    notes.write_text("mine", encoding="utf-8")
    cli.main(["--uninstall"], repo=fake_repo)
    assert "files we did not install" in capsys.readouterr().out
    assert notes.read_text() == "mine"
    assert sorted(p.name for p in (pykrita(home) / PLUGIN).iterdir()) == ["my-notes.txt"]


def test_uninstall_leaves_a_plugin_folder_without_record_alone(
    fake_repo: Path, home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manual = pykrita(home) / PLUGIN
    manual.mkdir(parents=True)
    (manual / "__init__.py").write_text("", encoding="utf-8")
    cli.main(["--uninstall"], repo=fake_repo)
    assert "no install record" in capsys.readouterr().out
    assert (manual / "__init__.py").exists()


def test_krita_dir_option_installs_there_and_accepts_pykrita_itself(
    fake_repo: Path, home: Path, websockets_venv: Path, tmp_path: Path
) -> None:
    custom = tmp_path / "custom" / "pykrita"
    install(fake_repo, websockets_venv, "--krita-dir", str(custom))
    assert (custom / PLUGIN / "__init__.py").is_file() and (custom / f"{PLUGIN}.desktop").is_file()
    assert not pykrita(home).exists()


def test_a_developer_vendor_folder_in_the_checkout_is_not_shipped(
    fake_repo: Path, home: Path, websockets_venv: Path
) -> None:
    stale = fake_repo / "krita_plugin" / "vendor" / "websockets"
    stale.mkdir(parents=True)
    (stale / "__init__.py").write_text("raise ImportError('stale developer copy')\n")
    (stale / "only_in_dev_copy.py").write_text("")
    install(fake_repo, websockets_venv)
    vendored = pykrita(home) / PLUGIN / "vendor" / "websockets"
    assert "stale developer copy" not in (vendored / "__init__.py").read_text()
    assert not (vendored / "only_in_dev_copy.py").exists()


def test_missing_plugin_source_is_a_clear_error(
    fake_repo: Path, home: Path, websockets_venv: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.rmtree(fake_repo / "krita_plugin")
    assert install(fake_repo, websockets_venv) == 1
    assert "plugin source folder" in capsys.readouterr().out


def test_offline_without_a_venv_explains_how_to_get_websockets(
    fake_repo: Path, home: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert install(fake_repo, tmp_path / "no-venv") == 1
    assert "cannot vendor websockets" in capsys.readouterr().out
    assert not pykrita(home).exists()


@pytest.mark.parametrize(
    ("rel", "kept"),
    [
        ("websockets/client.py", True),
        ("websockets/speedups.pyi", True),
        ("websockets/speedups.c", False),
        ("websockets/speedups.cpython-311-x86_64-linux-gnu.so", False),
        ("websockets/speedups.cp311-win_amd64.pyd", False),
        ("websockets/__pycache__/client.cpython-311.pyc", False),
    ],
)
def test_only_pure_python_websockets_files_are_vendored(rel: str, kept: bool) -> None:
    assert is_vendored_file(rel) is kept


def test_linux_profiles_follow_xdg_and_flatpak(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    linux, flatpak = platform_profiles("linux", env)
    assert linux.pykrita == tmp_path / ".local/share/krita/pykrita"
    assert linux.kritarc == tmp_path / ".config/kritarc"
    assert flatpak.pykrita == tmp_path / ".var/app/org.kde.krita/data/krita/pykrita"
    assert flatpak.kritarc == tmp_path / ".var/app/org.kde.krita/config/kritarc"
    xdg = {"HOME": str(tmp_path), "XDG_DATA_HOME": "/x/data", "XDG_CONFIG_HOME": "/x/config"}
    assert platform_profiles("linux", xdg)[0].pykrita == Path("/x/data/krita/pykrita")
    assert platform_profiles("linux", xdg)[0].kritarc == Path("/x/config/kritarc")


def test_windows_and_macos_profiles(tmp_path: Path) -> None:
    env = {"USERPROFILE": str(tmp_path), "APPDATA": r"C:\Users\p\AppData\Roaming", "LOCALAPPDATA": r"C:\L"}
    (windows,) = platform_profiles("win32", env)
    assert windows.pykrita == Path(r"C:\Users\p\AppData\Roaming") / "krita" / "pykrita"
    assert windows.kritarc == Path(r"C:\L") / "kritarc"
    (mac,) = platform_profiles("darwin", {"HOME": str(tmp_path)})
    assert mac.pykrita == tmp_path / "Library/Application Support/krita/pykrita"
    assert mac.kritarc == tmp_path / "Library/Preferences/kritarc"


def test_targets_are_the_profiles_in_use_or_the_usual_one(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    assert [p.name for p in target_profiles(None, platform="linux", env=env)] == ["linux"]
    (tmp_path / ".var/app/org.kde.krita/data/krita").mkdir(parents=True)
    assert [p.name for p in target_profiles(None, platform="linux", env=env)] == ["flatpak"]
    (tmp_path / ".local/share/krita").mkdir(parents=True)
    assert [p.name for p in target_profiles(None, platform="linux", env=env)] == ["linux", "flatpak"]


def test_installs_into_both_native_and_flatpak_profiles(
    fake_repo: Path, home: Path, websockets_venv: Path
) -> None:
    flatpak = home / ".var/app/org.kde.krita"
    (flatpak / "data/krita").mkdir(parents=True)
    (home / ".local/share/krita").mkdir(parents=True)
    install(fake_repo, websockets_venv)
    assert (flatpak / "data/krita/pykrita" / PLUGIN / "__init__.py").is_file()
    assert b"enable_krita_live_diffusion=true" in (flatpak / "config/kritarc").read_bytes()
    assert (pykrita(home) / PLUGIN / "__init__.py").is_file()
    cli.main(["--uninstall"], repo=fake_repo)
    assert not (flatpak / "config/kritarc").exists() and not (pykrita(home) / PLUGIN).exists()


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
