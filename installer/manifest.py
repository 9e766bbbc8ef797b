"""The model manifest (models/manifest.json) and the folder layouts it describes.

The backend's model store reads the same file, so the layout keys here are a shared contract:
`layout` maps each model kind to its folder in our own models directory, `foreign_layouts` lists
the folders ComfyUI and AUTOMATIC1111 use for the same kinds.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

NATIVE = "native"


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

    def layouts(self) -> dict[str, dict[str, list[str]]]:
        """Every known layout as kind -> candidate folders, our own first."""
        native = {kind: [folder] for kind, folder in self.layout.items()}
        return {NATIVE: native, **self.foreign_layouts}


def load_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from exc
    try:
        layout = {str(k): str(v) for k, v in data["layout"].items()}
        foreign = {
            str(name): {str(k): [str(f) for f in folders] for k, folders in kinds.items()}
            for name, kinds in data.get("foreign_layouts", {}).items()
        }
        models = [_entry(raw) for raw in data.get("models", [])]
    except (KeyError, TypeError, AttributeError) as exc:
        raise ManifestError(f"manifest {path} is malformed: {exc!r}") from exc
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


# Folders that a ComfyUI models directory has and ours never does.
_COMFYUI_ONLY = {
    "clip_vision",
    "diffusion_models",
    "unet",
    "upscale_models",
    "embeddings",
    "text_encoders",
    "clip",
}


def detect_layout(models_dir: Path, manifest: Manifest) -> str:
    """Name the layout whose folders best match the subfolders of `models_dir`.

    Our own layout and ComfyUI's use the same folder names, so on a tie ours wins; a folder is called
    ComfyUI's only when it also has folders only ComfyUI makes (the naming is cosmetic: both behave alike).
    """
    if not models_dir.is_dir():
        return NATIVE
    # Exact names, as the backend matches them (case matters on Linux).
    present = {p.name for p in models_dir.iterdir() if p.is_dir()}
    best, best_score = NATIVE, -1
    for name, kinds in manifest.layouts().items():
        score = sum(1 for folders in kinds.values() if any(f in present for f in folders))
        if score > best_score:
            best, best_score = name, score
    if best == NATIVE and "comfyui" in manifest.foreign_layouts and present & _COMFYUI_ONLY:
        return "comfyui"
    return best


def candidate_dirs(models_dir: Path, layout: str, kind: str, manifest: Manifest) -> list[Path]:
    """Folders under `models_dir` where a model of `kind` may live in that layout, preferred first."""
    folders = manifest.layouts().get(layout, {}).get(kind) or [manifest.layout[kind]]
    return [models_dir / folder for folder in folders]


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
    nested = path / "models"
    if nested.is_dir() and not _layout_folders_in(path, manifest) and _layout_folders_in(nested, manifest):
        return nested
    return path


def _layout_folders_in(path: Path, manifest: Manifest) -> bool:
    if not path.is_dir():
        return False
    names = {f for kinds in manifest.layouts().values() for folders in kinds.values() for f in folders}
    return any((path / name).is_dir() for name in names)
