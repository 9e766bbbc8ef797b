"""The model manifest (models/manifest.json) and the folder layouts it describes.

The backend's model store reads the same file, so the layout keys here are a shared contract:
`layout` maps each model kind to its folder in our own models directory, `foreign_layouts` lists
the folders ComfyUI and AUTOMATIC1111 use for the same kinds. Both sides read the layouts, and name a
folder's layout, with backend/model_layouts.py (standard library only, like this package).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from backend import model_layouts
from backend.model_layouts import NATIVE, LayoutError, Layouts, parse_layouts


class ManifestError(ValueError):
    """The manifest file is missing or malformed."""


@dataclass(frozen=True)
class ModelEntry:
    id: str
    kind: str
    file: str
    url: str
    size: int | None
    sha256: str | None
    licence: str
    required: bool
    description: str
    approx_size: int | None = None
    source: str = ""

    @property
    def planned_size(self) -> int:
        """Best known size for disk-space planning (0 when nothing is known)."""
        return self.size or self.approx_size or 0


@dataclass(frozen=True)
class Manifest:
    version: int
    layout: dict[str, str]
    foreign_layouts: dict[str, dict[str, list[str]]]
    models: list[ModelEntry]
    notes: list[str] = field(default_factory=list)

    @property
    def layout_set(self) -> Layouts:
        return Layouts(self.layout, self.foreign_layouts)

    def layouts(self) -> dict[str, dict[str, list[str]]]:
        """Every known layout as kind -> candidate folders, our own first."""
        return self.layout_set.all()


def load_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from exc
    try:
        layouts = parse_layouts(data)
        models = [_entry(raw) for raw in data.get("models", [])]
    except LayoutError as exc:
        raise ManifestError(f"manifest {path}: {exc}") from exc
    except (KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"manifest {path} is malformed: {exc!r}") from exc
    layout, foreign = layouts.own, layouts.foreign
    for entry in models:
        if entry.kind not in layout:
            raise ManifestError(f"model {entry.id!r} has kind {entry.kind!r} with no folder in the layout")
    return Manifest(
        version=int(data.get("version", 1)),
        layout=layout,
        foreign_layouts=foreign,
        models=models,
        notes=[str(n) for n in data.get("notes", [])],
    )


def _entry(raw: dict) -> ModelEntry:
    sha = raw.get("sha256")
    return ModelEntry(
        id=str(raw["id"]),
        kind=str(raw["kind"]),
        file=str(raw["file"]),
        url=str(raw["url"]),
        size=_optional_int(raw.get("size")),
        sha256=str(sha).lower() if sha else None,
        licence=str(raw.get("licence", "")),
        required=bool(raw.get("required", True)),
        description=str(raw.get("description", "")),
        approx_size=_optional_int(raw.get("approx_size")),
        source=str(raw.get("source", "")),
    )


def _optional_int(value: object) -> int | None:
    return None if value is None else int(value)  # type: ignore[arg-type]


def detect_layout(models_dir: Path, manifest: Manifest) -> str:
    """Name the layout of `models_dir` by the backend's rule (backend/model_layouts.py: most kinds present,
    ties to ours unless ComfyUI-only folders are there); ours when nothing matches."""
    return model_layouts.detect_layout(models_dir, manifest.layout_set) or NATIVE


def candidate_dirs(models_dir: Path, layout: str, kind: str, manifest: Manifest) -> list[Path]:
    """Folders under `models_dir` where a model of `kind` may live in that layout, preferred first."""
    return [models_dir / folder for folder in manifest.layout_set.folders(layout, kind)]


def find_existing(models_dir: Path, layout: str, entry: ModelEntry, manifest: Manifest) -> Path | None:
    """The file for `entry` under `models_dir`, matched by name: at the top of its kind's folders first,
    then in their subfolders (ComfyUI users sort models into subfolders, and the backend scans them too)."""
    folders = [f for f in candidate_dirs(models_dir, layout, entry.kind, manifest) if f.is_dir()]
    for folder in folders:
        if (folder / entry.file).is_file():
            return folder / entry.file
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            if entry.file in filenames:
                return Path(dirpath) / entry.file
    return None


def models_root(path: Path, manifest: Manifest) -> Path:
    """`path`, or its `models/` subfolder when `path` is the application folder (ComfyUI/,
    stable-diffusion-webui/) whose models folder holds the layout: the backend accepts both, and so do we."""
    return model_layouts.models_folder(path, manifest.layout_set) or path
