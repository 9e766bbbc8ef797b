"""The model step: find the chosen model sets' files, reuse what is already on disk, download the rest.

Models are looked for in the repo's models/ folder, in every folder listed in models/extra_paths.json
(which the backend reads too) and in --models-dir, each in its own layout (ours, ComfyUI's or A1111's).
Missing files are downloaded into --models-dir (or models/) unless --offline; whatever is still missing
is listed with where it goes and where it comes from. `--models` chooses the sets (the manifest's families:
SD1.5 by default, SDXL, or all) and the add-ons fetched on top of them (`sd15,guidance`; never by default);
a folder entry (a diffusers ControlNet) is fetched file by file into its folder.
"""

from __future__ import annotations

import json
import urllib.parse
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
    ModelFile,
    ModelSets,
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
    models: str | None = None  # --models: comma-separated sets and add-ons, or "all"; None: the default sets


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
    entries: list[ModelEntry], manifest: Manifest, primary: ModelsDir, dirs: list[ModelsDir], verify: bool
) -> list[ModelStatus]:
    statuses = []
    for entry in entries:
        target = candidate_dirs(primary.path, primary.layout, entry.kind, manifest)[0] / entry.name
        status = ModelStatus(entry, target, problem="missing")
        for folder in dirs:
            found = find_existing(folder.path, folder.layout, entry, manifest)
            if found is not None:
                status.found, status.problem = found, _check_entry(found, entry, verify)
                break
        statuses.append(status)
    return statuses


def _check_entry(path: Path, entry: ModelEntry, verify: bool) -> str:
    for part in entry.files:
        problem = _check_file(path / part.name if entry.is_folder else path, part, verify)
        if problem:
            return f"{part.name}: {problem}" if entry.is_folder else problem
    return ""


def _check_file(path: Path, part: ModelFile, verify: bool) -> str:
    size = path.stat().st_size
    if part.size is not None and size != part.size:
        return f"size mismatch: {size} bytes, expected {part.size}"
    if verify and part.sha256:
        digest = sha256_of(path)
        if digest != part.sha256:
            return f"sha256 mismatch: {digest}, expected {part.sha256}"
    return ""


def run_models_step(
    repo: Path, manifest: Manifest, options: ModelOptions, downloader: Downloader, reporter: Reporter
) -> list[ModelStatus]:
    repo_models = repo / "models"
    sets = manifest.choose(options.models)  # cli.py has rejected unknown names already
    _report_sets(manifest, sets, reporter)
    primary, dirs = search_dirs(repo_models, options, manifest)
    if options.models_dir is not None and primary.path != repo_models.resolve():
        primary.path.mkdir(parents=True, exist_ok=True)
        changed = record_extra_path(repo_models, primary.path)
        where = f"recorded in {repo_models / EXTRA_PATHS_FILE}" if changed else "already in extra_paths.json"
        reporter.info(
            STEP, f"using {primary.path} ({LAYOUT_NAMES.get(primary.layout, primary.layout)} layout), {where}"
        )

    statuses = check_models(manifest.chosen_entries(sets), manifest, primary, dirs, options.verify)
    present = [s for s in statuses if s.usable]
    reporter.info(STEP, f"{len(present)} present, {len(statuses) - len(present)} missing")
    for status in present:
        reporter.detail(f"ok: {status.entry.name} ({status.found})")
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


def _report_sets(manifest: Manifest, sets: ModelSets, reporter: Reporter) -> None:
    families, addons = list(sets.families), list(sets.addons)
    line = "model set(s): " + ", ".join(f"{name} ({manifest.families[name].label})" for name in families)
    if addons:
        line += " with add-on(s) " + ", ".join(f"{name} ({manifest.addons[name].label})" for name in addons)
    others = [name for name in manifest.families if name not in families]
    if others:
        command = ",".join([*families, *others, *addons])
        line += f"; also available: {', '.join(others)} (--models {command} or all)"
    # Add-ons are never fetched unasked (one may outweigh the base set): say what each would add, and how.
    for name in (name for name in manifest.addons if name not in addons):
        size = sum(m.planned_size for m in manifest.entries(families, [name]) if m.addon == name)
        about = f", about {human_size(size)}" if size else ""
        command = ",".join([*families, *addons, name])
        line += f"; add-on: {name} ({manifest.addons[name].label}{about}: --models {command})"
    reporter.info(STEP, line)


@dataclass
class _Job:
    """One file of one model to download."""

    status: ModelStatus
    part: ModelFile
    dest: Path

    @property
    def label(self) -> str:
        entry = self.status.entry
        return f"{entry.name}/{self.part.name}" if entry.is_folder else entry.name


def _jobs(statuses: list[ModelStatus]) -> list[_Job]:
    jobs = []
    for status in statuses:
        if not status.entry.is_folder:
            jobs.append(_Job(status, status.entry.files[0], status.target))
            continue
        for part in status.entry.files:
            dest = status.target / part.name
            # A folder half fetched by an earlier run: its finished files were verified before their rename.
            if not (dest.is_file() and not _check_file(dest, part, verify=False)):
                jobs.append(_Job(status, part, dest))
    return jobs


def _download_all(
    statuses: list[ModelStatus],
    options: ModelOptions,
    downloader: Downloader,
    reporter: Reporter,
    repo_models: Path,
) -> None:
    jobs = _jobs(statuses)
    # One disk-space check per file system up front, for all that goes there, so nothing starts that cannot
    # finish (the SDXL set puts 7 GB in checkpoints/ and 5 GB in controlnet/: each may fit, both not).
    needed: dict[int, tuple[Path, int]] = {}
    for job in jobs:
        device = _device_of(job.dest.parent)
        folder, size = needed.get(device, (job.dest.parent, 0))
        needed[device] = (folder, size + job.part.planned_size)
    for folder, size in needed.values():
        try:
            check_disk_space(folder, size, downloader.disk_usage)
        except DiskSpaceError as exc:
            reporter.fail(STEP, str(exc))
            for status in statuses:
                status.problem = "not downloaded: not enough disk space"
            return
    unreachable: set[str] = set()
    for job in jobs:
        status, part = job.status, job.part
        if status.problem != "missing":
            continue  # an earlier file of the same folder failed: the folder can't be complete this run
        url = apply_mirror(part.url, options.mirror)
        host = urllib.parse.urlsplit(url).hostname or ""
        if host in unreachable:
            status.problem = f"not downloaded: {host} cannot be reached"
            continue
        reporter.info(STEP, f"downloading {job.label} ({_size_text(part)}) from {url}")
        try:
            result = downloader.fetch(url, job.dest, sha256=part.sha256, size=part.size, label=job.label)
        except DiskSpaceError as exc:
            reporter.fail(STEP, str(exc))
            status.problem = "not downloaded: not enough disk space"
            continue
        except UnreachableError as exc:
            unreachable.add(host)
            status.problem = f"download failed: {exc}"
            reporter.warn(STEP, f"{job.label}: {exc}")
            continue
        except DownloadError as exc:
            status.problem = f"download failed: {exc}"
            (reporter.warn if not status.entry.required else reporter.info)(STEP, f"{job.label}: {exc}")
            continue
        _record_download(repo_models, result.path, status.target if status.entry.is_folder else None)
        if result.verified:
            reporter.info(STEP, f"downloaded {job.label} to {result.path} (sha256 verified)")
        else:
            reporter.warn(
                STEP,
                f"downloaded {job.label} to {result.path} UNVERIFIED: the manifest has no sha256 for it "
                f"(got sha256 {result.sha256})",
            )
    for status in statuses:
        if status.problem == "missing":  # every file of it is in place now
            status.found, status.problem = status.target, ""


def _device_of(folder: Path) -> int:
    """The file system `folder` is (or, not made yet, will be) on."""
    probe = folder
    while not probe.exists() and probe.parent != probe:
        probe = probe.parent
    return probe.stat().st_dev


def _size_text(item: ModelFile | ModelEntry) -> str:
    if item.size:
        return human_size(item.size)
    return f"about {human_size(item.planned_size)}" if item.planned_size else "size unknown"


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
        reporter.detail(f"- {entry.name} ({kind}; {entry.description}) [{status.problem}]")
        if entry.is_folder:
            reporter.detail(f"    put it at: {status.target} (a folder of {len(entry.files)} files)")
            for part in entry.files:
                reporter.detail(f"    file:      {part.name} from {part.url}")
        else:
            reporter.detail(f"    put it at: {status.target}")
            reporter.detail(f"    from:      {entry.files[0].url}")
        reporter.detail(f"    licence:   {entry.licence}; {_size_text(entry)}")
    reporter.missing_required.extend(s.entry.name for s in required)


def _read_record(record: Path) -> dict[str, list[str]]:
    try:
        data = json.loads(record.read_text(encoding="utf-8"))
        return {key: [str(p) for p in data.get(key, [])] for key in ("files", "folders")}
    except (FileNotFoundError, json.JSONDecodeError, AttributeError, TypeError):
        return {"files": [], "folders": []}


def _record_download(repo_models: Path, path: Path, folder: Path | None) -> None:
    """Remember a downloaded file (and the folder install.py made for a folder entry) for --purge-models."""
    record = repo_models / DOWNLOADS_FILE
    data = _read_record(record)
    for key, item in (("files", path), ("folders", folder)):
        if item is not None and str(item) not in data[key]:
            data[key].append(str(item))
    repo_models.mkdir(parents=True, exist_ok=True)
    record.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def purge_downloads(repo: Path, reporter: Reporter) -> None:
    """Delete the model files install.py downloaded (never files it only reused), and the folders it made for
    them once they are empty."""
    record = repo / "models" / DOWNLOADS_FILE
    if not record.is_file():
        reporter.info(STEP, "no downloaded models recorded: nothing to purge")
        return
    data = _read_record(record)
    removed = 0
    for path in map(Path, data["files"]):
        for candidate in (path, path.with_name(path.name + ".part")):
            if candidate.is_file():
                candidate.unlink()
                removed += 1
    for folder in map(Path, data["folders"]):
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    record.unlink()
    reporter.info(STEP, f"purged {removed} downloaded model file(s)")
