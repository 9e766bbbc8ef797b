"""The models folder layouts of models/manifest.json, and which layout a folder on disk uses.

One reader for both sides: the model store (backend/model_files.py) and install.py (installer/manifest.py)
parse `layout` and `foreign_layouts` here and name a folder's layout by the same rule, so a folder the
installer fills as ComfyUI's is the one the backend reads as ComfyUI's. Standard library only, Python 3.10:
install.py imports this before any dependency exists.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

NATIVE = "native"  # our own layout (`layout` in the manifest)

# Folders that a ComfyUI models folder has and ours never does: a folder named like ours that holds one of
# them is ComfyUI's (the name is cosmetic: the two layouts share their folder names).
COMFYUI = "comfyui"
COMFYUI_ONLY = frozenset({"clip_vision", "diffusion_models", "unet", "text_encoders", "clip"})


class LayoutError(ValueError):
    """The manifest's `layout` or `foreign_layouts` is missing or malformed."""


@dataclass(frozen=True)
class Layouts:
    own: dict[str, str]  # kind -> its folder in our own models folder
    foreign: dict[str, dict[str, list[str]]]  # layout name -> kind -> its candidate folders, preferred first

    def all(self) -> dict[str, dict[str, list[str]]]:
        """Every layout as kind -> candidate folders, ours first, then the manifest's order."""
        native = {kind: [folder] for kind, folder in self.own.items()}
        return {NATIVE: native, **self.foreign}

    def folders(self, layout: str, kind: str) -> list[str]:
        """The folders of `kind` in `layout`, preferred first; our own folder for what the layout lacks."""
        return self.all().get(layout, {}).get(kind) or [self.own[kind]]

    def folder_names(self) -> set[str]:
        return {f for kinds in self.all().values() for folders in kinds.values() for f in folders}


def parse_layouts(data: Any) -> Layouts:
    """`layout` and `foreign_layouts` of a parsed manifest (the rest of it belongs to the installer)."""
    try:
        own = {str(kind): str(folder) for kind, folder in data["layout"].items()}
        foreign = {
            str(name): {str(kind): _folder_list(folders) for kind, folders in kinds.items()}
            for name, kinds in data.get("foreign_layouts", {}).items()
        }
    except (KeyError, TypeError, AttributeError) as error:
        raise LayoutError(f"the manifest's layouts are malformed: {error!r}") from None
    return Layouts(own, foreign)


def _folder_list(value: Any) -> list[str]:
    if not isinstance(value, list):  # a bare string would read as a list of one-letter folders
        raise TypeError(f"a foreign layout lists each kind's folders, got {value!r}")
    return [str(folder) for folder in value]


def detect_layout(folder: Path, layouts: Layouts) -> str | None:
    """The layout whose folders best match the subfolders of `folder`; None when none of them is there.

    The one rule: the layout with the most kinds present wins (a kind counts once, however many of its
    folders are there); on a tie ComfyUI's wins over the others when ComfyUI-only folders are present, and
    otherwise the layout listed first (ours, then the manifest's order). Names match exactly, whatever the
    file system's case rules, so the answer is the same on every platform.
    """
    present = _subfolders(folder)
    best: tuple[int, int] | None = None
    best_name = None
    for name, kinds in layouts.all().items():
        hits = sum(1 for folders in kinds.values() if any(f in present for f in folders))
        marked = int(name == COMFYUI and bool(present & COMFYUI_ONLY))
        if hits and (best is None or (hits, marked) > best):
            best, best_name = (hits, marked), name
    return best_name


def models_folder(path: Path, layouts: Layouts) -> Path | None:
    """The models folder at `path`: `path` itself when it holds any layout's folders, else its `models/`
    subfolder when that does (the application folder above it: ComfyUI/, stable-diffusion-webui/); None
    when neither does."""
    names = layouts.folder_names()
    for candidate in (path, path / "models"):
        if _subfolders(candidate) & names:
            return candidate
    return None


def _subfolders(folder: Path) -> set[str]:
    try:
        return {entry.name for entry in folder.iterdir() if entry.is_dir()}
    except OSError:  # absent, not a folder, or unreadable: nothing of any layout there
        return set()
