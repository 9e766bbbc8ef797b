"""The model manifest (models/manifest.json) and the folder layouts it describes.

The backend's model store reads the same file, so the layout keys here are a shared contract:
`layout` maps each model kind to its folder in our own models directory, `foreign_layouts` lists
the folders ComfyUI and AUTOMATIC1111 use for the same kinds. Both sides read the layouts, and name a
folder's layout, with backend/model_layouts.py (standard library only, like this package). The rest is the
installer's: `families` (the model sets `--models` chooses from) and `models`, each a single file or a folder
of files (a diffusers ControlNet) of one family.
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


class UnknownModelSetError(ValueError):
    """`--models` names a model set the manifest does not have."""


# Every model belongs to one family (the base architecture it is for); the families are the sets `--models`
# chooses from. A manifest without `families` (the first ones) has only SD1.5's: all its entries are SD1.5.
DEFAULT_FAMILY = "sd15"
IMPLICIT_FAMILIES = {DEFAULT_FAMILY: {"label": "SD 1.5", "default": True}}
ALL_SETS = "all"  # `--models all`: every family
HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    default: bool  # fetched when `--models` is not given


@dataclass(frozen=True)
class ModelFile:
    """One file to download: its name where it goes, where it comes from, what it must be."""

    name: str
    url: str
    size: int | None
    sha256: str | None
    approx_size: int | None = None

    @property
    def planned_size(self) -> int:
        """Best known size for disk-space planning (0 when nothing is known)."""
        return self.size or self.approx_size or 0


@dataclass(frozen=True)
class ModelEntry:
    """One model: a single file in its kind's folder, or (`is_folder`) a folder of files there, such as a
    diffusers ControlNet (its weights and its config.json side by side)."""

    id: str
    kind: str
    name: str  # the file's name in the kind's folder, or the folder's
    files: tuple[ModelFile, ...]  # one for a single file, the folder's files for a folder
    licence: str
    required: bool
    description: str
    source: str = ""
    family: str = DEFAULT_FAMILY
    is_folder: bool = False

    @property
    def planned_size(self) -> int:
        return sum(f.planned_size for f in self.files)

    @property
    def size(self) -> int | None:
        """The exact total size; None when any file's is unknown."""
        sizes = [f.size for f in self.files]
        return None if any(s is None for s in sizes) else sum(s or 0 for s in sizes)


@dataclass(frozen=True)
class Manifest:
    version: int
    layout: dict[str, str]
    foreign_layouts: dict[str, dict[str, list[str]]]
    models: list[ModelEntry]
    notes: list[str] = field(default_factory=list)
    families: dict[str, Family] = field(
        default_factory=lambda: {DEFAULT_FAMILY: Family(DEFAULT_FAMILY, "SD 1.5", True)}
    )

    @property
    def layout_set(self) -> Layouts:
        return Layouts(self.layout, self.foreign_layouts)

    def layouts(self) -> dict[str, dict[str, list[str]]]:
        """Every known layout as kind -> candidate folders, our own first."""
        return self.layout_set.all()

    @property
    def default_families(self) -> list[str]:
        return [f.name for f in self.families.values() if f.default]

    def choose_families(self, choice: str | None) -> list[str]:
        """The families `--models` names (comma-separated, or `all`), in the manifest's order; the default
        ones when it is not given. Raises UnknownModelSetError for a name the manifest lacks."""
        if choice is None:
            return self.default_families
        names = [n.strip().lower() for n in choice.split(",") if n.strip()]
        known = ", ".join([*self.families, ALL_SETS])
        if not names:
            raise UnknownModelSetError(f"--models needs a model set: one or more of {known}")
        if ALL_SETS in names:
            return list(self.families)
        for name in names:
            if name not in self.families:
                raise UnknownModelSetError(f"unknown model set {name!r}: choose from {known}")
        return [f for f in self.families if f in names]

    def entries(self, families: list[str]) -> list[ModelEntry]:
        return [m for m in self.models if m.family in families]


def load_manifest(path: Path) -> Manifest:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(f"manifest not found: {path}") from exc
    except json.JSONDecodeError as exc:
        raise ManifestError(f"manifest {path} is not valid JSON: {exc}") from exc
    try:
        layouts = parse_layouts(data)
        families = _families(data.get("families", IMPLICIT_FAMILIES))
        models = [_entry(raw) for raw in data.get("models", [])]
        _check_entries(models, layouts.own, families)
    except LayoutError as exc:
        raise ManifestError(f"manifest {path}: {exc}") from exc
    except ManifestError as exc:
        raise ManifestError(f"manifest {path}: {exc}") from exc
    except (KeyError, TypeError, AttributeError, ValueError) as exc:
        raise ManifestError(f"manifest {path} is malformed: {exc!r}") from exc
    return Manifest(
        version=int(data.get("version", 1)),
        layout=layouts.own,
        foreign_layouts=layouts.foreign,
        models=models,
        notes=[str(n) for n in data.get("notes", [])],
        families=families,
    )


def _families(raw: dict) -> dict[str, Family]:
    families = {}
    for name, info in raw.items():
        if not isinstance(name, str) or not name.isidentifier() or name == ALL_SETS:
            raise ManifestError(f"family name {name!r} must be a plain identifier other than {ALL_SETS!r}")
        if not isinstance(info, dict) or not isinstance(info.get("default", False), bool):
            raise ManifestError(f"family {name!r} must be an object with a label and a true/false default")
        families[name] = Family(name, str(info.get("label", name)), info.get("default", False))
    if not any(f.default for f in families.values()):
        raise ManifestError("no family is marked default: a plain `install.py` would fetch nothing")
    return families


def _entry(raw: dict) -> ModelEntry:
    is_folder = "folder" in raw
    if is_folder == ("file" in raw):
        raise ManifestError(f"model {raw.get('id')!r} needs either `file` and `url`, or `folder` and `files`")
    if is_folder:
        parts = raw["files"]
        if not isinstance(parts, list) or not parts:
            raise ManifestError(f"model {raw.get('id')!r}: `files` must list the folder's files")
        files = tuple(_file(part, str(part["file"])) for part in parts)
        name = str(raw["folder"])
    else:
        name = str(raw["file"])
        files = (_file(raw, name),)
    return ModelEntry(
        id=str(raw["id"]),
        kind=str(raw["kind"]),
        name=name,
        files=files,
        licence=str(raw.get("licence", "")),
        required=bool(raw.get("required", True)),
        description=str(raw.get("description", "")),
        source=str(raw.get("source", "")),
        family=str(raw.get("family", DEFAULT_FAMILY)),
        is_folder=is_folder,
    )


def _file(raw: dict, name: str) -> ModelFile:
    sha = raw.get("sha256")
    if sha is not None and not (len(str(sha)) == 64 and all(c in HEX for c in str(sha).lower())):
        raise ManifestError(f"{name}: sha256 must be 64 hex digits or null, got {sha!r}")
    return ModelFile(
        name=name,
        url=str(raw["url"]),
        size=_optional_int(raw.get("size")),
        sha256=str(sha).lower() if sha else None,
        approx_size=_optional_int(raw.get("approx_size")),
    )


def _check_entries(models: list[ModelEntry], layout: dict[str, str], families: dict[str, Family]) -> None:
    seen: set[str] = set()
    for entry in models:
        if entry.id in seen:
            raise ManifestError(f"model id {entry.id!r} is listed twice")
        seen.add(entry.id)
        if entry.kind not in layout:
            raise ManifestError(f"model {entry.id!r} has kind {entry.kind!r} with no folder in the layout")
        if entry.family not in families:
            raise ManifestError(
                f"model {entry.id!r} has family {entry.family!r}, not one of the manifest's families "
                f"({', '.join(families)})"
            )
        # Names become paths under the models folder: one plain path part each, never a way out of it.
        for name in (entry.name, *(f.name for f in entry.files)):
            if not name or name in (".", "..") or "/" in name or "\\" in name:
                raise ManifestError(f"model {entry.id!r}: {name!r} must be a plain file or folder name")
        if len({f.name for f in entry.files}) != len(entry.files):
            raise ManifestError(f"model {entry.id!r} lists a file twice")


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
    """The file (or, for a folder entry, the folder holding all its files) for `entry` under `models_dir`,
    matched by name: at the top of its kind's folders first, then in their subfolders (ComfyUI users sort
    models into subfolders, and the backend scans them too)."""
    folders = [f for f in candidate_dirs(models_dir, layout, entry.kind, manifest) if f.is_dir()]
    for folder in folders:
        if _is_complete(folder / entry.name, entry):
            return folder / entry.name
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            names = dirnames if entry.is_folder else filenames
            if entry.name in names and _is_complete(Path(dirpath) / entry.name, entry):
                return Path(dirpath) / entry.name
    return None


def _is_complete(path: Path, entry: ModelEntry) -> bool:
    if not entry.is_folder:
        return path.is_file()
    return path.is_dir() and all((path / f.name).is_file() for f in entry.files)


def models_root(path: Path, manifest: Manifest) -> Path:
    """`path`, or its `models/` subfolder when `path` is the application folder (ComfyUI/,
    stable-diffusion-webui/) whose models folder holds the layout: the backend accepts both, and so do we."""
    return model_layouts.models_folder(path, manifest.layout_set) or path
