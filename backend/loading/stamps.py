"""What the file system says about a model file's version, so a file changed under a loaded model is noticed.

Models are cached by name; a painter (or a sync tool) may replace the file behind a name at any time. The
stamp is cheap enough to take before every job: one stat per file.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

# Diffusers folders hold a handful of files; this bounds the walk of a strange folder.
MAX_FOLDER_FILES = 256


@dataclass(frozen=True)
class FileStamp:
    """Equal for two looks at a file exactly when nothing visible changed in between.

    The inode tells a replaced file (`.part` + rename) from the old one; size and mtime tell a rewrite in
    place; ctime too, because `rsync -t --inplace` restores the old mtime, while ctime can't be set back.
    """

    entries: tuple[tuple[str, int, int, int, int, int], ...]  # (name, device, inode, size, mtime, ctime)


def file_stamp(path: Path) -> FileStamp | None:
    """The stamp of a file, or of every file in a (diffusers) folder; None when it can't be read."""
    try:
        if path.is_dir():
            return FileStamp(tuple(_folder_entries(path)))
        return FileStamp((_entry("", os.stat(path)),))
    except OSError:
        return None


def _folder_entries(folder: Path) -> list[tuple[str, int, int, int, int, int]]:
    entries = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in sorted(filenames):
            path = os.path.join(dirpath, name)
            entries.append(_entry(os.path.relpath(path, folder), os.stat(path)))
            if len(entries) >= MAX_FOLDER_FILES:
                return entries
    return entries


def _entry(name: str, info: os.stat_result) -> tuple[str, int, int, int, int, int]:
    return (name, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
