"""The model step: find the default models, reuse what is already on disk, download the rest.

Models are looked for in the repo's models/ folder, in every folder listed in models/extra_paths.json
(which the backend reads too) and in --models-dir, each in its own layout (ours, ComfyUI's or A1111's).
Missing files are downloaded into --models-dir (or models/) unless --offline; whatever is still missing
is listed with where it goes and where it comes from.
"""

from __future__ import annotations

import json
import urllib.parse
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from installer.download import (
    DiskSpaceError,
    Downloader,
    DownloadError,
    UnreachableError,
    apply_mirror,
    check_disk_space,
    sha256_of,
)
from installer.manifest import (
    Manifest,
    ModelEntry,
    candidate_dirs,
    detect_layout,
    find_existing,
    models_root,
)
from installer.progress import human_size
from installer.report import Reporter

STEP = "models"
EXTRA_PATHS_FILE = "extra_paths.json"
DOWNLOADS_FILE = ".downloads.json"  # what we downloaded, so --purge-models deletes nothing else
LAYOUT_NAMES = {"native": "Krita Live Diffusion", "comfyui": "ComfyUI", "a1111": "AUTOMATIC1111"}


@dataclass(frozen=True)
class ModelsDir:
    path: Path
    layout: str


@dataclass
class ModelStatus:
    entry: ModelEntry
    target: Path  # where a download goes (and where a painter should put the file)
    found: Path | None = None
    problem: str = ""  # why the file is not usable: "", "missing", a checksum mismatch, a download error

    @property
    def usable(self) -> bool:
        return self.found is not None and not self.problem


@dataclass
class ModelOptions:
    models_dir: Path | None = None  # --models-dir
    offline: bool = False
    verify: bool = False
    mirror: str | None = None


def read_extra_paths(repo_models: Path) -> list[Path]:
    try:
        data = json.loads((repo_models / EXTRA_PATHS_FILE).read_text(encoding="utf-8"))
        return [Path(p) for p in data.get("paths", [])]
    except (FileNotFoundError, json.JSONDecodeError, AttributeError, TypeError):
        return []


def record_extra_path(repo_models: Path, path: Path) -> bool:
    """Add `path` to models/extra_paths.json; True when the file changed."""
    paths = [str(p) for p in read_extra_paths(repo_models)]
    if str(path) in paths:
        return False
    paths.append(str(path))
    repo_models.mkdir(parents=True, exist_ok=True)
    text = json.dumps({"paths": paths}, indent=2) + "\n"
    (repo_models / EXTRA_PATHS_FILE).write_text(text, encoding="utf-8")
    return True


def search_dirs(
    repo_models: Path, options: ModelOptions, manifest: Manifest
) -> tuple[ModelsDir, list[ModelsDir]]:
    """(the folder downloads go to, every folder to look in: that one first)."""
    primary_path = models_root((options.models_dir or repo_models).resolve(), manifest)
    primary = ModelsDir(primary_path, detect_layout(primary_path, manifest))
    dirs = [primary]
    for path in [repo_models.resolve(), *read_extra_paths(repo_models)]:
        if path.is_dir() and all(path != d.path for d in dirs):
            dirs.append(ModelsDir(path, detect_layout(path, manifest)))
    return primary, dirs


def check_models(
    manifest: Manifest, primary: ModelsDir, dirs: list[ModelsDir], verify: bool
) -> list[ModelStatus]:
    statuses = []
    for entry in manifest.models:
        target = candidate_dirs(primary.path, primary.layout, entry.kind, manifest)[0] / entry.file
        status = ModelStatus(entry, target, problem="missing")
        for folder in dirs:
            found = find_existing(folder.path, folder.layout, entry, manifest)
            if found is not None:
                status.found, status.problem = found, _check_file(found, entry, verify)
                break
        statuses.append(status)
    return statuses


def _check_file(path: Path, entry: ModelEntry, verify: bool) -> str:
    size = path.stat().st_size
    if entry.size is not None and size != entry.size:
        return f"size mismatch: {size} bytes, expected {entry.size}"
    if verify and entry.sha256:
        digest = sha256_of(path)
        if digest != entry.sha256:
            return f"sha256 mismatch: {digest}, expected {entry.sha256}"
    return ""


def run_models_step(
    repo: Path, manifest: Manifest, options: ModelOptions, downloader: Downloader, reporter: Reporter
) -> list[ModelStatus]:
    repo_models = repo / "models"
    primary, dirs = search_dirs(repo_models, options, manifest)
    if options.models_dir is not None and primary.path != repo_models.resolve():
        primary.path.mkdir(parents=True, exist_ok=True)
        changed = record_extra_path(repo_models, primary.path)
        where = f"recorded in {repo_models / EXTRA_PATHS_FILE}" if changed else "already in extra_paths.json"
        reporter.info(
            STEP, f"using {primary.path} ({LAYOUT_NAMES.get(primary.layout, primary.layout)} layout), {where}"
        )

    statuses = check_models(manifest, primary, dirs, options.verify)
    present = [s for s in statuses if s.usable]
    reporter.info(STEP, f"{len(present)} present, {len(statuses) - len(present)} missing")
    for status in present:
        reporter.detail(f"ok: {status.entry.file} ({status.found})")
    for status in statuses:
        if status.found is not None and status.problem:
            reporter.warn(
                STEP, f"{status.found}: {status.problem}; replace it or delete it to download it again"
            )

    to_fetch = [s for s in statuses if s.found is None]
    if to_fetch and options.offline:
        reporter.info(STEP, "offline: downloading nothing")
    elif to_fetch:
        _download_all(to_fetch, options, downloader, reporter, repo_models)

    missing = [s for s in statuses if not s.usable]
    if missing:
        _report_missing(missing, reporter)
    return statuses


def _download_all(
    statuses: list[ModelStatus],
    options: ModelOptions,
    downloader: Downloader,
    reporter: Reporter,
    repo_models: Path,
) -> None:
    # One disk-space check per destination folder up front, so nothing starts that cannot finish.
    needed: dict[Path, int] = defaultdict(int)
    for status in statuses:
        needed[status.target.parent] += status.entry.planned_size
    for folder, size in needed.items():
        try:
            check_disk_space(folder, size, downloader.disk_usage)
        except DiskSpaceError as exc:
            reporter.fail(STEP, str(exc))
            for status in statuses:
                status.problem = "not downloaded: not enough disk space"
            return
    unreachable: set[str] = set()
    for status in statuses:
        entry = status.entry
        url = apply_mirror(entry.url, options.mirror)
        host = urllib.parse.urlsplit(url).hostname or ""
        if host in unreachable:
            status.problem = f"not downloaded: {host} cannot be reached"
            continue
        reporter.info(STEP, f"downloading {entry.file} ({_size_text(entry)}) from {url}")
        try:
            result = downloader.fetch(
                url, status.target, sha256=entry.sha256, size=entry.size, label=entry.file
            )
        except DiskSpaceError as exc:
            reporter.fail(STEP, str(exc))
            status.problem = "not downloaded: not enough disk space"
            continue
        except UnreachableError as exc:
            unreachable.add(host)
            status.problem = f"download failed: {exc}"
            reporter.warn(STEP, f"{entry.file}: {exc}")
            continue
        except DownloadError as exc:
            status.problem = f"download failed: {exc}"
            (reporter.warn if not entry.required else reporter.info)(STEP, f"{entry.file}: {exc}")
            continue
        status.found, status.problem = result.path, ""
        _record_download(repo_models, result.path)
        if result.verified:
            reporter.info(STEP, f"downloaded {entry.file} to {result.path} (sha256 verified)")
        else:
            reporter.warn(
                STEP,
                f"downloaded {entry.file} to {result.path} UNVERIFIED: the manifest has no sha256 for it "
                f"(got sha256 {result.sha256})",
            )


def _size_text(entry: ModelEntry) -> str:
    if entry.size:
        return human_size(entry.size)
    return f"about {human_size(entry.approx_size)}" if entry.approx_size else "size unknown"


def _report_missing(missing: list[ModelStatus], reporter: Reporter) -> None:
    required = [s for s in missing if s.entry.required]
    reporter.info(
        STEP,
        f"{len(missing)} model file(s) missing ({len(required)} required). Put each file at the path shown, "
        "or run again with the network, or point --models-dir at a ComfyUI/A1111 models folder holding them:",
    )
    for status in missing:
        entry = status.entry
        kind = "required" if entry.required else "optional"
        reporter.detail(f"- {entry.file} ({kind}; {entry.description}) [{status.problem}]")
        reporter.detail(f"    put it at: {status.target}")
        reporter.detail(f"    from:      {entry.url}")
        reporter.detail(f"    licence:   {entry.licence}; {_size_text(entry)}")
    reporter.missing_required.extend(s.entry.file for s in required)


def _record_download(repo_models: Path, path: Path) -> None:
    record = repo_models / DOWNLOADS_FILE
    try:
        files = json.loads(record.read_text(encoding="utf-8")).get("files", [])
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        files = []
    if str(path) not in files:
        files.append(str(path))
        repo_models.mkdir(parents=True, exist_ok=True)
        record.write_text(json.dumps({"files": files}, indent=2) + "\n", encoding="utf-8")


def purge_downloads(repo: Path, reporter: Reporter) -> None:
    """Delete the model files install.py downloaded (never files it only reused)."""
    record = repo / "models" / DOWNLOADS_FILE
    try:
        files = [Path(p) for p in json.loads(record.read_text(encoding="utf-8")).get("files", [])]
    except (FileNotFoundError, json.JSONDecodeError, AttributeError):
        reporter.info(STEP, "no downloaded models recorded: nothing to purge")
        return
    removed = 0
    for path in files:
        for candidate in (path, path.with_name(path.name + ".part")):
            if candidate.is_file():
                candidate.unlink()
                removed += 1
    record.unlink()
    reporter.info(STEP, f"purged {removed} downloaded model file(s)")
