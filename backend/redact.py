"""Server paths out of what clients read: model files named relative to the models folder.

Messages are written for the server's own log too (where a full path helps whoever runs it), and deeper code
quotes exception texts that carry paths (`[Errno 13] Permission denied: '/home/...'`). A client on another
machine has no use for them, and they tell it the account name and the layout of the server's disk. So texts
are redacted once, where messages leave for a client: a path inside a models folder becomes the name in it
(`/srv/ai/models/checkpoints/x.safetensors` -> `checkpoints/x.safetensors`), any other absolute path its last
part.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from pathlib import Path

# An absolute path's folders: after a start of text, a space, a quote or a bracket (not inside a relative
# path or a URL), one or more `/folder/` parts; what follows (the file's own name) is kept.
POSIX_FOLDERS = re.compile(r"(?<![\w.~:/-])/(?:[^\s/'\"()\[\],;:]+/)+")
# C:\folder\ and \\server\share\ parts.
WINDOWS_FOLDERS = re.compile(r"(?:\b[A-Za-z]:|\\\\[^\s\\'\"]+)\\(?:[^\s\\'\"()\[\],;]+\\)*")


class PathRedactor:
    """`redact(text)`: `text` with every path under `roots` relative to its root and other absolute paths
    cut to their last part."""

    def __init__(self, roots: Iterable[Path]) -> None:
        spellings: set[str] = set()
        for root in roots:
            for form in (Path(root).absolute(), _resolved(Path(root))):
                if form is not None and str(form) not in (os.sep, ""):
                    spellings.add(str(form))
        # Longest first: a root inside another (a symlink target, an extra folder under the models folder)
        # is replaced before the shorter one could cut it in half.
        self._roots = sorted(spellings, key=len, reverse=True)

    def redact(self, text: str) -> str:
        for root in self._roots:
            if root in text:
                text = re.sub(re.escape(root) + r"[/\\]", "", text)
                # The folder itself; not a longer name that merely starts with it (`models2`).
                text = re.sub(re.escape(root) + r"(?![\w-]|\.\w)", "the models folder", text)
        text = POSIX_FOLDERS.sub("", text)
        return WINDOWS_FOLDERS.sub("", text)


def _resolved(path: Path) -> Path | None:
    try:
        return path.resolve()
    except (OSError, RuntimeError):
        return None
