"""The model manifest (models/manifest.json) and the folder layouts it describes.

The backend's model store reads the same file, so the layout keys here are a shared contract:
`layout` maps each model kind to its folder in our own models directory, `foreign_layouts` lists
the folders ComfyUI and AUTOMATIC1111 use for the same kinds. Both sides read the layouts, and name a
folder's layout, with backend/model_layouts.py (standard library only, like this package). The rest is the
installer's: `families` (the model sets `--models` chooses from), `addons` (optional sets fetched on top of a
family's base set only when named: `--models sd15,guidance`) and `models`, each a single file or a folder of
files (a diffusers ControlNet) of one family, or of several (a file they share, listed once so it is fetched
once), in a family's base set or in one add-on.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
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
ALL_SETS = "all"  # `--models all`: every family, with every add-on
HEX = frozenset("0123456789abcdef")


@dataclass(frozen=True)
class Family:
    name: str
    label: str
    default: bool  # fetched when `--models` is not given


@dataclass(frozen=True)
class Addon:
    """An optional set of models fetched on top of the chosen families' base sets, only when `--models` names
    it: never part of the default download, which may be smaller than an add-on alone."""

    name: str
    label: str
    description: str = ""


@dataclass(frozen=True)
class ModelSets:
    """What `--models` chose: the families, and the add-ons fetched for them beside their base sets."""

    families: tuple[str, ...]
    addons: tuple[str, ...] = ()


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
    # The families it serves: one, or several for a file they share (an image encoder, an estimator), which
    # is listed once so that choosing both families fetches it once.
    families: tuple[str, ...] = (DEFAULT_FAMILY,)
    addon: str | None = None  # the add-on it belongs to; None: its families' base set
    is_folder: bool = False

    @property
    def family(self) -> str:
        """Its first family (the only one, for all but shared files)."""
        return self.families[0]

    def serves(self, families: Sequence[str]) -> bool:
        return any(family in families for family in self.families)

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
    addons: dict[str, Addon] = field(default_factory=dict)  # none in a manifest without `addons`

    @property
    def layout_set(self) -> Layouts:
        return Layouts(self.layout, self.foreign_layouts)

    def layouts(self) -> dict[str, dict[str, list[str]]]:
        """Every known layout as kind -> candidate folders, our own first."""
        return self.layout_set.all()

    @property
    def default_families(self) -> list[str]:
        return [f.name for f in self.families.values() if f.default]

    def choose(self, choice: str | None) -> ModelSets:
        """The families and add-ons `--models` names (comma-separated, or `all`: every family with every
        add-on), in the manifest's order; the default families without add-ons when it is not given. Raises
        UnknownModelSetError for a name the manifest lacks."""
        if choice is None:
            return ModelSets(tuple(self.default_families))
        names = [n.strip().lower() for n in choice.split(",") if n.strip()]
        if not names:
            raise UnknownModelSetError(f"--models needs a model set: one or more of {self._known_sets()}")
        if ALL_SETS in names:
            return ModelSets(tuple(self.families), tuple(self.addons))
        for name in names:
            if name not in self.families and name not in self.addons:
                raise UnknownModelSetError(f"unknown model set {name!r}: choose from {self._known_sets()}")
        # An add-on named alone comes with the default families' base sets: its models guide a checkpoint of
        # their family and are no use without one, and base files already on disk are only checked.
        families = [f for f in self.families if f in names] or self.default_families
        return ModelSets(tuple(families), tuple(a for a in self.addons if a in names))

    def choose_families(self, choice: str | None) -> list[str]:
        """The families of choose(choice), add-ons aside."""
        return list(self.choose(choice).families)

    def _known_sets(self) -> str:
        known = ", ".join([*self.families, ALL_SETS])
        return f"{known}; add-ons, on top of those: {', '.join(self.addons)}" if self.addons else known

    def entries(self, families: Sequence[str], addons: Sequence[str] = ()) -> list[ModelEntry]:
        """The base entries of `families` and their entries of `addons`, in the manifest's order: each once,
        a shared one too."""
        return [m for m in self.models if m.serves(families) and (m.addon is None or m.addon in addons)]

    def chosen_entries(self, sets: ModelSets) -> list[ModelEntry]:
        return self.entries(sets.families, sets.addons)


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
        addons = _addons(data.get("addons", {}), families)
        models = [_entry(raw) for raw in data.get("models", [])]
        _check_entries(models, layouts.own, families, addons)
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
        addons=addons,
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


def _addons(raw: object, families: dict[str, Family]) -> dict[str, Addon]:
    if not isinstance(raw, dict):
        raise ManifestError("`addons` must map each add-on's name to its label and description")
    addons = {}
    for name, info in raw.items():
        # One --models list names both: an add-on called like a family would be ambiguous.
        if not isinstance(name, str) or not name.isidentifier() or name == ALL_SETS or name in families:
            raise ManifestError(
                f"add-on name {name!r} must be a plain identifier other than {ALL_SETS!r} and the families' "
                "names"
            )
        if not isinstance(info, dict):
            raise ManifestError(f"add-on {name!r} must be an object with a label and a description")
        addons[name] = Addon(name, str(info.get("label", name)), str(info.get("description", "")))
    return addons


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
        families=_entry_families(raw),
        addon=None if raw.get("addon") is None else str(raw["addon"]),
        is_folder=is_folder,
    )


def _entry_families(raw: dict) -> tuple[str, ...]:
    """`family`: one family's name, or a list of them for a file several families share."""
    value = raw.get("family", DEFAULT_FAMILY)
    names = value if isinstance(value, list) else [value]
    if not names or not all(isinstance(name, str) for name in names):
        raise ManifestError(f"model {raw.get('id')!r}: `family` must be a family's name or a list of them")
    return tuple(dict.fromkeys(names))


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


def _check_entries(
    models: list[ModelEntry], layout: dict[str, str], families: dict[str, Family], addons: dict[str, Addon]
) -> None:
    seen: set[str] = set()
    targets: dict[tuple[str, str], str] = {}  # (kind, name) -> the id of the entry that goes there
    for entry in models:
        if entry.id in seen:
            raise ManifestError(f"model id {entry.id!r} is listed twice")
        seen.add(entry.id)
        if entry.kind not in layout:
            raise ManifestError(f"model {entry.id!r} has kind {entry.kind!r} with no folder in the layout")
        for family in entry.families:
            if family not in families:
                raise ManifestError(
                    f"model {entry.id!r} has family {family!r}, not one of the manifest's families "
                    f"({', '.join(families)})"
                )
        if entry.addon is not None and entry.addon not in addons:
            raise ManifestError(
                f"model {entry.id!r} has add-on {entry.addon!r}, not one of the manifest's add-ons "
                f"({', '.join(addons) or 'it has none'})"
            )
        # Two entries of one file would fetch it twice when both are chosen: one entry serves both families.
        other = targets.setdefault((entry.kind, entry.name), entry.id)
        if other != entry.id:
            raise ManifestError(
                f"models {other!r} and {entry.id!r} are both {entry.kind}/{entry.name}: list it once, with "
                'every family it serves ("family": [...])'
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
