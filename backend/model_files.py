"""Where model files live, how they are named, and which names are safe to open.

The project's own folder (`models/`, layout from `models/manifest.json`) comes first; existing ComfyUI or
A1111 `models` folders can be added as extra roots so painters need not copy gigabytes. Names are posix paths
relative to a kind's folder (`sd15/dreamshaper.safetensors`); they arrive from the network, so every name is
checked before it touches the file system (no `..`, no absolute names). Symlinks inside the folders are
followed, to files and folders alike, wherever they point: only the machine's owner can place them, and
painters link models they keep elsewhere (as ComfyUI and A1111 let them).

The default checkpoint (a job's `checkpoint: null`) is never a file that can't work: the one a job last named
and loaded, while it stays usable, else the first listed checkpoint that is usable, of a family the backend
runs and not an inpainting one (backend/model_check.py judges each from its header).
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from backend.model_check import Verdict, VerdictCache
from backend.model_errors import ModelError, ModelNotFoundError, NoCheckpointError, UnsafeModelNameError
from backend.model_families import FAMILIES
from backend.model_layouts import Layouts, detect_layout, models_folder, parse_layouts

log = logging.getLogger(__name__)

KINDS = (
    "checkpoints", "loras", "controlnet", "vae", "taesd", "embeddings", "upscale_models", "ipadapter",
    "clip_vision",
)  # fmt: skip

# Used when no manifest can be read, so a bare models folder still works; mirrors models/manifest.json.
DEFAULT_LAYOUT: dict[str, str] = {
    "checkpoints": "checkpoints",
    "loras": "loras",
    "controlnet": "controlnet",
    "vae": "vae",
    "taesd": "vae_approx",
    "embeddings": "embeddings",
    "upscale_models": "upscale_models",
    "ipadapter": "ipadapter",
    "clip_vision": "clip_vision",
}
DEFAULT_FOREIGN_LAYOUTS: dict[str, dict[str, list[str]]] = {
    "comfyui": {k: [v] for k, v in DEFAULT_LAYOUT.items()},
    "a1111": {
        "checkpoints": ["Stable-diffusion"],
        "loras": ["Lora", "LyCORIS"],
        "controlnet": ["ControlNet"],
        "vae": ["VAE"],
        "taesd": ["VAE-approx"],
        "embeddings": ["../embeddings"],  # A1111 keeps them beside its models folder
        "upscale_models": ["ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT"],  # a folder per architecture
        "ipadapter": ["ipadapter"],  # (the ControlNet extension's own folders are not read)
        "clip_vision": ["clip_vision"],
    },
}
REPO_MANIFEST = Path(__file__).resolve().parents[1] / "models" / "manifest.json"

# No file system has names longer than this (bytes per path part); longer ones fail with ENAMETOOLONG.
MAX_NAME_PART_BYTES = 255
# Names are echoed in messages; a 500-character one is cut so a reply stays readable.
SHOWN_NAME_LENGTH = 80

# .ckpt checkpoints are loaded with torch.load(weights_only=True), which refuses pickled code.
CHECKPOINT_SUFFIXES = (".safetensors", ".ckpt")
# In the order the loader prefers them when one folder holds both: .safetensors can't carry code.
TAESD_SUFFIXES = (".safetensors", ".pth", ".pt")
SAFETENSORS_ONLY = (".safetensors",)
# Textual-inversion embeddings: A1111's .pt files are read with torch.load(weights_only=True) too.
EMBEDDING_SUFFIXES = (".safetensors", ".pt")
# Upscale models (ESRGAN and the others spandrel reads): .pth/.pt are read with torch.load(weights_only=True).
UPSCALER_SUFFIXES = (".safetensors", ".pth", ".pt")

SERVED = " or ".join(family.label for family in FAMILIES.values())  # "SD 1.5 or SDXL"
HINTS = {
    "checkpoints": f"{SERVED} .safetensors checkpoints (or diffusers folders)",
    "loras": f"{SERVED} LoRA .safetensors files",
    "controlnet": f"{SERVED} ControlNet .safetensors files",
    "vae": f"{SERVED} VAE .safetensors files",
    "taesd": "taesd_encoder.pth and taesd_decoder.pth",
    "embeddings": "textual-inversion embeddings (.safetensors or .pt files)",
    "upscale_models": "upscale models (ESRGAN, Real-ESRGAN, SwinIR, ... as .pth or .safetensors files)",
    "ipadapter": f"{SERVED} IP-Adapter .safetensors files (ip-adapter_sd15.safetensors, ...)",
    "clip_vision": "CLIP vision encoders (CLIP-ViT-H-14-laion2B-s32B-b79K.safetensors, ...)",
}
SINGULAR = {
    "checkpoints": "checkpoint",
    "loras": "LoRA",
    "controlnet": "ControlNet",
    "vae": "VAE",
    "taesd": "TAESD",
    "embeddings": "embedding",
    "upscale_models": "upscale model",
    "ipadapter": "IP-Adapter",
    "clip_vision": "CLIP vision encoder",
}


@dataclass(frozen=True)
class ModelRoot:
    """One `models` folder and, per kind, the subfolders that hold that kind."""

    path: Path
    layout_name: str
    folders: Mapping[str, tuple[str, ...]]

    def dirs(self, kind: str) -> list[Path]:
        return [self.path / folder for folder in self.folders.get(kind, ())]


def read_layouts(manifest: Path | None) -> Layouts:
    """The manifest's layouts (backend/model_layouts.py reads them), the repository's when `manifest` can't
    be read; kinds a manifest omits keep their default folders."""
    for candidate in (manifest, REPO_MANIFEST):
        if candidate is None or not candidate.is_file():
            continue
        try:
            layouts = parse_layouts(json.loads(candidate.read_text(encoding="utf-8")))
        except (OSError, ValueError) as e:  # LayoutError and JSON errors are ValueErrors
            log.warning("ignoring unreadable model manifest %s: %s", candidate, e)
            continue
        return Layouts({**DEFAULT_LAYOUT, **layouts.own}, layouts.foreign or DEFAULT_FOREIGN_LAYOUTS)
    return Layouts(dict(DEFAULT_LAYOUT), DEFAULT_FOREIGN_LAYOUTS)


def shown(name: object) -> str:
    """A name as messages quote it: repr'd, and cut to a readable length."""
    text = repr(name)
    return text if len(text) <= SHOWN_NAME_LENGTH else text[: SHOWN_NAME_LENGTH - 4] + "...'"


def check_name(name: str) -> PurePosixPath:
    """Reject names that could leave a model folder before any path is built from them."""
    if not isinstance(name, str) or not name or name.strip() != name:
        raise UnsafeModelNameError(f"Invalid model name {shown(name)}.")
    if "\0" in name or "\\" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise UnsafeModelNameError(
            f"Unsafe model name {shown(name)}: use a relative path with '/' separators."
        )
    parts = name.split("/")
    if any(part in ("", ".", "..") for part in parts):
        raise UnsafeModelNameError(
            f"Unsafe model name {shown(name)}: '..', '.' and empty path parts are not allowed."
        )
    return PurePosixPath(name)


def _too_long_for_a_file(rel: PurePosixPath) -> bool:
    # surrogatepass: a lone surrogate can't name a file either, but must not raise here
    return any(len(part.encode("utf-8", "surrogatepass")) > MAX_NAME_PART_BYTES for part in rel.parts)


FolderMark = tuple[int, int] | None


def _folder_mark(folder: Path) -> FolderMark:
    """What changes when a folder's entries do (inode and modification time); None: not there."""
    try:
        info = folder.stat()
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns)


def is_diffusers_folder(path: Path) -> bool:
    return (path / "model_index.json").is_file() or (path / "unet" / "config.json").is_file()


def _is_model_folder(kind: str, path: Path) -> bool:
    """A folder that is one model: a diffusers checkpoint, or a CLIP vision encoder's config.json and
    model.safetensors (backend/loading/clip_vision.py)."""
    if kind == "checkpoints":
        return is_diffusers_folder(path)
    if kind == "clip_vision":
        return (path / "config.json").is_file() and (path / "model.safetensors").is_file()
    return False


def _inside(path: Path, folder: Path) -> bool:
    """True if `path`, with every symlink resolved, is inside `folder` (resolved too)."""
    try:
        path.resolve(strict=True).relative_to(folder.resolve(strict=True))
    except (OSError, ValueError):
        return False
    return True


def detect_foreign_root(path: Path, layouts: Layouts) -> ModelRoot | None:
    """An extra models folder and the layout it uses, by backend/model_layouts.py's rule (install.py's too).

    Accepts the `models` folder itself or the application folder above it (ComfyUI/, stable-diffusion-webui/).
    """
    base = models_folder(path, layouts)
    name = detect_layout(base, layouts) if base is not None else None
    if base is None or name is None:
        return None
    return ModelRoot(base, name, {kind: tuple(layouts.folders(name, kind)) for kind in layouts.own})


class ModelStore:
    """Lists and resolves model files across the project's models folder and any extra roots."""

    def __init__(self, root: Path, extra_roots: Sequence[Path] = (), manifest: Path | None = None) -> None:
        self.root = Path(root).absolute()
        layouts = read_layouts(manifest if manifest is not None else self.root / "manifest.json")
        self.roots: list[ModelRoot] = [ModelRoot(self.root, "own", {k: (v,) for k, v in layouts.own.items()})]
        for extra in [*extra_roots, *self._extra_paths_file()]:
            extra = Path(extra).expanduser()
            if not extra.is_absolute():
                extra = self.root / extra
            found = detect_foreign_root(extra.absolute(), layouts)
            if found is None:
                log.warning("extra model folder %s has no ComfyUI or A1111 model subfolders; ignored", extra)
            elif all(found.path.resolve() != r.path.resolve() for r in self.roots):
                self.roots.append(found)
        self.checked = VerdictCache()
        # The checkpoint a job last named and loaded (EngineWorker notes it): the default while usable.
        self.last_used_checkpoint: str | None = None
        # embedding_names(): (each walked folder's mark, the names listed then)
        self._embedding_listing: tuple[tuple[tuple[Path, FolderMark], ...], list[str]] | None = None

    def _extra_paths_file(self) -> list[Path]:
        path = self.root / "extra_paths.json"
        if not path.is_file():
            return []
        try:
            paths = json.loads(path.read_text(encoding="utf-8"))["paths"]
            return [Path(str(p)) for p in paths]
        except (OSError, ValueError, KeyError, TypeError) as e:
            log.warning("ignoring unreadable %s: %s", path, e)
            return []

    def folder(self, kind: str) -> Path:
        """Where the project's own files of this kind go (the place error messages point to)."""
        self._check_kind(kind)
        return self.roots[0].dirs(kind)[0]

    def shown_folder(self, kind: str) -> str:
        """The folder as messages name it: with a trailing separator, so that once a client's copy is cut to
        the name inside the models folder (backend/redact.py) it still reads as a folder (`checkpoints/`)."""
        return f"{self.folder(kind)}{os.sep}"

    def list_models(self) -> dict[str, list[str]]:
        return {kind: self.list_kind(kind) for kind in KINDS}

    def list_kind(self, kind: str) -> list[str]:
        self._check_kind(kind)
        names: set[str] = set()
        for root in self.roots:
            for folder in root.dirs(kind):
                names.update(self._scan(kind, folder))
        return sorted(names, key=lambda n: (n.casefold(), n))

    def embedding_names(self) -> list[str]:
        """list_kind("embeddings"), walked again only when one of the folders walked then has changed (its
        modification time: adding, removing or renaming a file or folder in it changes it). Every job's
        prompts are matched against these names (A1111 writes an embedding as its bare file name), and a
        live frame must not walk a folder of hundreds of files."""
        known = self._embedding_listing
        if known is not None and all(_folder_mark(folder) == mark for folder, mark in known[0]):
            return known[1]
        entered: list[Path] = []
        tops = [folder for root in self.roots for folder in root.dirs("embeddings")]
        marks = {folder: _folder_mark(folder) for folder in tops}  # before the walk: a change during it shows
        names: set[str] = set()
        for folder in tops:
            names.update(self._scan("embeddings", folder, entered))
        for folder in entered:
            marks.setdefault(folder, _folder_mark(folder))
        listed = sorted(names, key=lambda n: (n.casefold(), n))
        self._embedding_listing = (tuple(marks.items()), listed)
        return listed

    def resolve(self, kind: str, name: str) -> Path:
        """The file (or diffusers folder) for `name`; raises a ModelError subclass with advice otherwise."""
        self._check_kind(kind)
        rel = check_name(name)
        if not _too_long_for_a_file(rel):
            for root in self.roots:
                for folder in root.dirs(kind):
                    found = self._candidate(kind, name, folder, folder.joinpath(*rel.parts))
                    if found is not None:
                        return found
        raise ModelNotFoundError(
            f"No {SINGULAR[kind]} named {shown(name)}. Put {HINTS[kind]} in {self.shown_folder(kind)}"
        )

    def _candidate(self, kind: str, name: str, folder: Path, candidate: Path) -> Path | None:
        """`candidate` if it is a usable model of this kind, None if absent; ModelError if it is unusable."""
        try:
            if not candidate.exists():  # a dangling symlink counts as absent
                return None
            # No check of where symlinks lead: `name` was checked (check_name), and links are the owner's.
            if candidate.is_file():
                if self._accepts(kind, candidate.name):
                    return candidate
                raise ModelError(
                    f"{SINGULAR[kind]} {shown(name)} has an unsupported file type. "
                    f"Put {HINTS[kind]} in {self.shown_folder(kind)}"
                )
            if candidate.is_dir() and _is_model_folder(kind, candidate):
                return candidate
        except OSError as error:
            # Permissions, a name the file system refuses, an I/O error: the model can't be used, and the
            # job that named it must hear so (an OSError escaping would be an `internal` error).
            raise ModelError(
                f"{SINGULAR[kind]} {shown(name)} can't be opened ({error.strerror or error})."
            ) from None
        return None

    def verdict(self, kind: str, name: str) -> Verdict:
        """What the file's header says (backend/model_check.py), read once per file version; a name that
        can't be resolved gets its error as the reason."""
        try:
            return self.checked.verdict(kind, self.resolve(kind, name))
        except ModelError as error:
            return Verdict(error.message)

    def resolve_usable(self, kind: str, name: str) -> Path:
        """resolve(), refusing a file whose header already shows that the loader would (its mark in the
        model lists): a job naming it fails when it arrives, and never reaches the loaded model."""
        path = self.resolve(kind, name)
        reason = self.checked.verdict(kind, path).reason
        if reason is not None:
            what = SINGULAR[kind]
            raise ModelError(f"{what[:1].upper()}{what[1:]} {shown(name)} can't be used: {reason}.")
        return path

    def no_checkpoint_error(self) -> NoCheckpointError:
        """No checkpoint can be used: none is there, or none of those there works (the first one's reason)."""
        checkpoints, loras = self.shown_folder("checkpoints"), self.shown_folder("loras")
        verdicts = ((name, self.verdict("checkpoints", name)) for name in self.list_kind("checkpoints"))
        unusable = [(name, verdict.reason) for name, verdict in verdicts if verdict.reason is not None]
        if unusable:
            name, reason = unusable[0]
            more = f"; {len(unusable) - 1} more can't be used either" if len(unusable) > 1 else ""
            return NoCheckpointError(
                f"No checkpoint can be used ({shown(name)}: {reason}{more}). "
                f"Put an {SERVED} .safetensors checkpoint in {checkpoints}."
            )
        return NoCheckpointError(
            f"No checkpoint found. Put an {SERVED} .safetensors checkpoint in {checkpoints} (and the "
            f"LCM-LoRA for it in {loras}), or run `python install.py` to fetch the default models."
        )

    def default_checkpoint(self) -> str | None:
        """The checkpoint of a job that names none; None when no listed one can be used.

        The one a job last named and loaded, while it is listed and usable; else the first listed usable
        checkpoint, an inpainting one (it would serve plain img2img) only when there is nothing else. Files
        are judged in list order until a fit one is found, each header read once per file version."""
        names = self.list_kind("checkpoints")
        last = self.last_used_checkpoint
        if last is not None and last in names and self.verdict("checkpoints", last).reason is None:
            return last
        inpainting: str | None = None
        for name in names:
            verdict = self.verdict("checkpoints", name)
            if verdict.reason is not None:
                continue
            if not verdict.inpaint:
                return name
            inpainting = inpainting or name
        return inpainting

    def _check_kind(self, kind: str) -> None:
        if kind not in KINDS:
            raise ModelError(f"Unknown model kind {kind!r}; expected one of {', '.join(KINDS)}.")

    @staticmethod
    def _accepts(kind: str, filename: str) -> bool:
        if filename.startswith("."):
            return False
        suffixes = {
            "checkpoints": CHECKPOINT_SUFFIXES,
            "taesd": TAESD_SUFFIXES,
            "embeddings": EMBEDDING_SUFFIXES,
            "upscale_models": UPSCALER_SUFFIXES,
        }.get(kind, SAFETENSORS_ONLY)
        return filename.lower().endswith(suffixes)

    def _scan(self, kind: str, folder: Path, entered: list[Path] | None = None) -> Iterator[str]:
        """Names of the files (and diffusers folders) under `folder`, symlinks followed. A symlinked folder
        that leads back inside `folder` is not entered (its files are listed under their own names), nor one
        already walked (a link loop). `entered` collects the folders walked."""
        if not folder.is_dir():
            return
        walked: set[Path] = set()
        for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
            here = Path(dirpath)
            try:
                real = here.resolve(strict=True)
            except (OSError, RuntimeError):  # RuntimeError: a symlink loop on older Pythons
                dirnames[:] = []
                continue
            if real in walked:
                dirnames[:] = []
                continue
            walked.add(real)
            if entered is not None:
                entered.append(here)
            keep = []
            for d in sorted(dirnames):
                sub = here / d
                if d.startswith("."):
                    continue
                if _is_model_folder(kind, sub):
                    yield sub.relative_to(folder).as_posix()
                elif not (sub.is_symlink() and _inside(sub, folder)):
                    keep.append(d)
            dirnames[:] = keep  # diffusers folders are models, not folders of models
            for f in filenames:
                path = here / f
                if self._accepts(kind, f) and path.is_file():
                    yield path.relative_to(folder).as_posix()
