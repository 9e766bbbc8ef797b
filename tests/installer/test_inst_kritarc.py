"""kritarc edits: one key set or removed, every other byte of the file kept."""

from __future__ import annotations

import errno
import pathlib
from pathlib import Path

import pytest
from installer_testkit import USER_KRITARC

from installer import kritarc

KEY = b"enable_krita_live_diffusion=true"


@pytest.mark.parametrize(
    "original",
    [
        pytest.param(USER_KRITARC, id="python-section-among-others"),
        pytest.param(USER_KRITARC.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(b"[General]\nA=1\n", id="no-python-section"),
        pytest.param(b"[General]\nA=1", id="no-final-newline"),
        pytest.param(b"[General]\nA=1\n[python]\nenable_x=true", id="python-last-no-final-newline"),
        pytest.param(b"", id="empty"),
        pytest.param(b"[python]\nenable_krita_live_diffusion=false\nenable_x=true\n", id="key-was-false"),
        pytest.param(
            b"[python]\r\nenable_krita_live_diffusion = False\r\n[General]\r\n", id="key-false-crlf"
        ),
    ],
)
def test_enable_then_disable_restores_the_file_exactly(tmp_path: Path, original: bytes) -> None:
    path = tmp_path / "kritarc"
    path.write_bytes(original)
    changed, change = kritarc.enable(path, "krita_live_diffusion")
    assert changed and kritarc.is_enabled(path, "krita_live_diffusion")
    after = path.read_bytes()
    # Only our line is new: every original line is still there, in order.
    original_lines = [
        line.rstrip(b"\r\n") for line in original.splitlines() if b"krita_live_diffusion" not in line
    ]
    after_lines = [line.rstrip(b"\r\n") for line in after.splitlines() if b"krita_live_diffusion" not in line]
    assert [line for line in after_lines if line.strip() and line != b"[python]"] == [
        line for line in original_lines if line.strip() and line != b"[python]"
    ]
    if b"\r\n" in original:
        assert KEY + b"\r\n" in after
    # A second enable changes nothing.
    assert kritarc.enable(path, "krita_live_diffusion")[0] is False
    assert path.read_bytes() == after
    # The recorded change survives a JSON round trip and undoes exactly what was done.
    restored = kritarc.KritarcChange.from_json(change.to_json())
    assert kritarc.disable(path, restored)
    assert path.read_bytes() == original


def test_key_is_added_inside_the_existing_python_section(tmp_path: Path) -> None:
    path = tmp_path / "kritarc"
    path.write_bytes(USER_KRITARC)
    kritarc.enable(path, "krita_live_diffusion")
    expected = USER_KRITARC.replace(
        b"enable_other_plugin=true\n", b"enable_other_plugin=true\n" + KEY + b"\n"
    )
    assert path.read_bytes() == expected


def test_missing_file_is_created_and_removed_again(tmp_path: Path) -> None:
    path = tmp_path / "config" / "kritarc"
    changed, change = kritarc.enable(path, "krita_live_diffusion")
    assert changed and path.read_bytes() == b"[python]\n" + KEY + b"\n"
    assert kritarc.disable(path, change)
    assert not path.exists()


def test_created_file_that_krita_has_since_filled_is_kept(tmp_path: Path) -> None:
    path = tmp_path / "kritarc"
    _, change = kritarc.enable(path, "krita_live_diffusion")
    path.write_bytes(path.read_bytes() + b"[General]\nA=1\n")  # Krita ran and wrote its settings
    kritarc.disable(path, change)
    assert path.read_bytes() == b"[General]\nA=1\n"


def test_disable_leaves_a_file_without_our_key_alone(tmp_path: Path) -> None:
    path = tmp_path / "kritarc"
    path.write_bytes(USER_KRITARC)
    change = kritarc.KritarcChange(path=str(path), key="enable_krita_live_diffusion")
    assert kritarc.disable(path, change) is False
    assert path.read_bytes() == USER_KRITARC


def test_a_similar_key_in_another_section_is_not_ours(tmp_path: Path) -> None:
    path = tmp_path / "kritarc"
    path.write_bytes(b"[other]\nenable_krita_live_diffusion=true\n")
    assert not kritarc.is_enabled(path, "krita_live_diffusion")
    kritarc.enable(path, "krita_live_diffusion")
    assert path.read_bytes() == b"[other]\nenable_krita_live_diffusion=true\n\n[python]\n" + KEY + b"\n"


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
        kritarc.enable(path, "krita_live_diffusion")
    assert path.read_bytes() == USER_KRITARC  # all the painter's Krita settings are still there
