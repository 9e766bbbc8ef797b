"""Set or remove one key in Krita's `kritarc` without disturbing anything else in it.

kritarc is an INI-like file that Krita rewrites itself. We edit it as bytes, line by line: every line
but the one we own stays byte-for-byte the same (line endings, spacing, comments, odd encodings), and
what we added is recorded so that removing it gives back the original file exactly.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

SECTION = "python"


@dataclass
class KritarcChange:
    """What `enable` did, so `disable` can undo exactly that."""

    path: str
    key: str
    created_file: bool = False
    created_section: bool = False
    added_separator: bool = False  # a blank line we put before the section we appended
    added_final_newline: bool = False  # the file did not end with a newline before we appended
    previous_line: str | None = None  # the key's own line before we changed it (latin-1 round trip)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> KritarcChange:
        fields = cls.__dataclass_fields__
        return cls(**{k: v for k, v in data.items() if k in fields})


def enable_key(name: str) -> str:
    return f"enable_{name}"


def enable(path: Path, plugin: str) -> tuple[bool, KritarcChange]:
    """Make sure `[python] enable_<plugin>=true` is set. Returns (changed, what was done)."""
    key = enable_key(plugin)
    change = KritarcChange(path=str(path), key=key)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        _write(path, f"[{SECTION}]\n{key}=true\n".encode())
        change.created_file = True
        change.created_section = True
        return True, change
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    newline = _newline_of(lines)
    wanted = f"{key}=true".encode() + newline
    start, end = _section_bounds(lines, SECTION)
    if start is None:
        addition = b""
        if data and not data.endswith((b"\n", b"\r")):
            addition += newline
            change.added_final_newline = True
        if data.strip():
            addition += newline
            change.added_separator = True
        addition += f"[{SECTION}]".encode() + newline + wanted
        _write(path, data + addition)
        change.created_section = True
        return True, change
    index = _key_line(lines, start, end, key)
    if index is not None:
        if _value(lines[index]).lower() == b"true":
            return False, change
        change.previous_line = lines[index].decode("latin-1")
        lines[index] = wanted
    else:
        insert_at = _end_of_entries(lines, start, end)
        if insert_at > 0 and not lines[insert_at - 1].endswith((b"\n", b"\r")):
            lines[insert_at - 1] += newline
            change.added_final_newline = True
        lines.insert(insert_at, wanted)
    _write(path, b"".join(lines))
    return True, change


def is_enabled(path: Path, plugin: str) -> bool:
    if not path.exists():
        return False
    lines = path.read_bytes().splitlines(keepends=True)
    start, end = _section_bounds(lines, SECTION)
    if start is None:
        return False
    index = _key_line(lines, start, end, enable_key(plugin))
    return index is not None and _value(lines[index]).lower() == b"true"


def disable(path: Path, change: KritarcChange) -> bool:
    """Undo `enable`: restore the key's previous line, or remove it (and whatever we added around it)."""
    if not path.exists():
        return False
    data = path.read_bytes()
    lines = data.splitlines(keepends=True)
    start, end = _section_bounds(lines, SECTION)
    if start is None:
        return False
    index = _key_line(lines, start, end, change.key)
    if index is None:
        return False
    if change.previous_line is not None:
        lines[index] = change.previous_line.encode("latin-1")
        _write(path, b"".join(lines))
        return True
    del lines[index]
    removed_at = index
    end -= 1
    section_empty = all(not line.strip() for line in lines[start + 1 : end])
    if change.created_section and section_empty:
        del lines[start:end]
        removed_at = start
        if change.created_file and not any(line.strip() for line in lines):
            path.unlink()
            return True
        if change.added_separator and start > 0 and not lines[start - 1].strip():
            del lines[start - 1]
            removed_at = start - 1
    if change.added_final_newline and removed_at == len(lines) and lines:
        lines[-1] = lines[-1].rstrip(b"\r\n")
    _write(path, b"".join(lines))
    return True


def _write(path: Path, data: bytes) -> None:
    """Replace the file's content all at once: a full disk or a crash mid-write must not truncate kritarc
    (it holds all of the painter's Krita settings). A linked kritarc (dotfiles) stays a link."""
    target = Path(os.path.realpath(path))
    tmp = target.with_name(target.name + ".kld-tmp")
    try:
        tmp.write_bytes(data)
        if target.exists():
            shutil.copymode(target, tmp)
        os.replace(tmp, target)
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()


def _newline_of(lines: list[bytes]) -> bytes:
    for line in lines:
        if line.endswith(b"\r\n"):
            return b"\r\n"
        if line.endswith(b"\n"):
            return b"\n"
    return b"\n"


def _section_bounds(lines: list[bytes], section: str) -> tuple[int | None, int]:
    """(index of the `[section]` header, index just past its last line), or (None, len)."""
    header = f"[{section}]".encode()
    start = None
    for i, line in enumerate(lines):
        stripped = line.strip()
        if start is None:
            if stripped == header:
                start = i
        elif stripped.startswith(b"[") and stripped.endswith(b"]"):
            return start, i
    return start, len(lines)


def _key_line(lines: list[bytes], start: int, end: int, key: str) -> int | None:
    wanted = key.encode()
    for i in range(start + 1, end):
        name, sep, _ = lines[i].partition(b"=")
        if sep and name.strip() == wanted:
            return i
    return None


def _value(line: bytes) -> bytes:
    return line.partition(b"=")[2].strip()


def _end_of_entries(lines: list[bytes], start: int, end: int) -> int:
    """Just after the section's last non-blank line, so blank lines between sections stay where they are."""
    last = start
    for i in range(start + 1, end):
        if lines[i].strip():
            last = i
    return last + 1
