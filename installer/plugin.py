"""Install, update and remove the Krita plugin in one Krita profile.

The installed layout, inside the profile's pykrita/ folder:
    krita_live_diffusion.desktop          (from krita_plugin/krita_live_diffusion.desktop)
    krita_live_diffusion/                 (the rest of krita_plugin/)
        protocol/                         (a copy of the repo's shared protocol package)
        vendor/websockets/                (pure-Python websockets; the plugin puts vendor/ on sys.path)
        .install-record.json              (what we wrote, so --uninstall removes exactly that)
plus `[python] enable_krita_live_diffusion=true` in kritarc.

Files are compared by content and written only when different, so a second run rewrites nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from installer import kritarc
from installer.krita_paths import KritaProfile
from installer.report import Reporter
from installer.vendor import VendorSource

PLUGIN_NAME = "krita_live_diffusion"
DESKTOP_FILE = f"{PLUGIN_NAME}.desktop"
RECORD_FILE = ".install-record.json"
SOURCE_DIR = "krita_plugin"
PROTOCOL_DIR = "protocol"
VENDOR_DIR = "vendor"
STEP = "plugin"


class PluginSourceError(RuntimeError):
    pass


@dataclass
class SyncResult:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)

    @property
    def touched(self) -> bool:
        return bool(self.added or self.changed or self.removed)


def _is_source_file(rel: Path) -> bool:
    parts = rel.parts
    if any(p == "__pycache__" or (p.startswith(".") and p != ".") for p in parts):
        return False
    return not rel.name.endswith((".pyc", ".pyo"))


def _tree(root: Path, prefix: str) -> dict[str, bytes]:
    files = {}
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_file() and _is_source_file(rel):
            files[f"{prefix}{rel.as_posix()}"] = path.read_bytes()
    return files


def collect_files(repo: Path, websockets: VendorSource) -> tuple[dict[str, bytes], bytes]:
    """Everything that goes into the plugin folder (path relative to it -> bytes), and the .desktop file."""
    source = repo / SOURCE_DIR
    desktop = source / DESKTOP_FILE
    protocol = repo / PROTOCOL_DIR
    if not source.is_dir():
        raise PluginSourceError(f"the plugin source folder {source} does not exist")
    if not desktop.is_file():
        raise PluginSourceError(f"the plugin's desktop file {desktop} does not exist")
    if not (protocol / "__init__.py").is_file():
        raise PluginSourceError(f"the shared protocol package {protocol} does not exist")
    # A vendor/ folder in the checkout is a developer's copy: the installed one is built from the venv below.
    files = {
        rel: data
        for rel, data in _tree(source, "").items()
        if rel != DESKTOP_FILE and not rel.startswith(f"{VENDOR_DIR}/")
    }
    files.update(_tree(protocol, f"{PROTOCOL_DIR}/"))
    files.update({f"{VENDOR_DIR}/{rel}": data for rel, data in websockets.files.items()})
    return files, desktop.read_bytes()


def _write_if_different(path: Path, data: bytes) -> str | None:
    """Write atomically when the content differs. Returns "added", "changed" or None."""
    if path.is_file():
        if path.stat().st_size == len(data) and path.read_bytes() == data:
            return None
        outcome = "changed"
    else:
        outcome = "added"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".kld-tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return outcome


def _inside(base: Path, rel: str) -> Path | None:
    """`base / rel`, or None when a tampered record points outside `base`."""
    path = (base / rel).resolve()
    return path if path.is_relative_to(base.resolve()) else None


def read_record(plugin_dir: Path) -> dict | None:
    """Our install record, or None when there is none we can trust (missing, unreadable, not an object)."""
    try:
        record = json.loads((plugin_dir / RECORD_FILE).read_text(encoding="utf-8"))
    except (FileNotFoundError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return record if isinstance(record, dict) else None


def _desktop_warning(desktop: bytes) -> str | None:
    text = desktop.decode("utf-8", errors="replace")
    if f"X-KDE-Library={PLUGIN_NAME}" not in text.replace(" ", ""):
        return f"{DESKTOP_FILE} lacks X-KDE-Library={PLUGIN_NAME}: Krita will not find the plugin"
    return None


def install(
    profile: KritaProfile,
    repo: Path,
    websockets: VendorSource,
    reporter: Reporter,
    start_command: str | None = None,
) -> None:
    """`start_command`: how to start the backend as installed; the plugin shows it when no backend answers."""
    files, desktop = collect_files(repo, websockets)
    warning = _desktop_warning(desktop)
    if warning:
        reporter.warn(STEP, warning)
    pykrita = profile.pykrita
    plugin_dir = pykrita / PLUGIN_NAME
    if _linked(plugin_dir, reporter):
        return
    fresh = not plugin_dir.exists()
    old = read_record(plugin_dir) or {}

    result = SyncResult()
    for rel, data in files.items():
        outcome = _write_if_different(plugin_dir / rel, data)
        if outcome:
            getattr(result, outcome).append(rel)
    outcome = _write_if_different(pykrita / DESKTOP_FILE, desktop)
    if outcome:
        getattr(result, outcome).append(f"../{DESKTOP_FILE}")
    for rel in old.get("files", []):
        if rel not in files:
            stale = _inside(plugin_dir, rel)
            if stale is not None and stale.is_file():
                stale.unlink()
                result.removed.append(rel)
    _prune_empty_dirs(plugin_dir)

    rc_changed, change = kritarc.enable(profile.kritarc, PLUGIN_NAME)
    # A key that was already set is the painter's (or Krita's): uninstall must leave it, so record nothing.
    undo: kritarc.KritarcChange | None = change if rc_changed else None
    # The first change we ever made is the one to undo: keep it across later runs.
    old_change = old.get("kritarc")
    if old_change and old_change.get("path") == str(profile.kritarc):
        undo = kritarc.KritarcChange.from_json(old_change)
    record = {
        "version": 1,
        "plugin": PLUGIN_NAME,
        "desktop": DESKTOP_FILE,
        "files": sorted(files),
        "kritarc": undo.to_json() if undo is not None else None,
        "vendored": {"websockets": websockets.version},
        "source": str(repo.resolve()),
        "start_command": start_command,
    }
    record_text = json.dumps(record, indent=2, sort_keys=True) + "\n"
    _write_if_different(plugin_dir / RECORD_FILE, record_text.encode("utf-8"))

    if fresh:
        reporter.info(
            STEP,
            f"installed to {plugin_dir} ({len(files)} files, websockets {websockets.version} vendored) "
            f"and {pykrita / DESKTOP_FILE}",
        )
    elif result.touched:
        reporter.info(
            STEP,
            f"updated {plugin_dir} ({len(result.added)} added, {len(result.changed)} changed, "
            f"{len(result.removed)} removed)",
        )
    else:
        reporter.info(STEP, f"up to date ({plugin_dir})")
    if rc_changed:
        reporter.info("kritarc", f"enabled {PLUGIN_NAME} in {profile.kritarc}")
    else:
        reporter.info("kritarc", f"up to date ({PLUGIN_NAME} already enabled in {profile.kritarc})")


def uninstall(profile: KritaProfile, reporter: Reporter) -> None:
    pykrita = profile.pykrita
    plugin_dir = pykrita / PLUGIN_NAME
    if _linked(plugin_dir, reporter):
        return
    record = read_record(plugin_dir)
    if record is None:
        if plugin_dir.exists():
            reporter.warn(
                STEP, f"{plugin_dir} has no install record: not installed by install.py, left alone"
            )
        else:
            reporter.info(STEP, f"not installed in {pykrita}: nothing to remove")
        return
    removed = 0
    for rel in record.get("files", []):
        path = _inside(plugin_dir, rel)
        if path is not None and path.is_file():
            path.unlink()
            removed += 1
    desktop = pykrita / record.get("desktop", DESKTOP_FILE)
    if desktop.is_file() and desktop.parent == pykrita:
        desktop.unlink()
    (plugin_dir / RECORD_FILE).unlink(missing_ok=True)
    # Python writes bytecode caches next to the files we installed: they are ours too.
    for cache in sorted(plugin_dir.rglob("__pycache__"), reverse=True):
        shutil.rmtree(cache, ignore_errors=True)
    _prune_empty_dirs(plugin_dir)
    if plugin_dir.exists():
        try:
            plugin_dir.rmdir()
        except OSError:
            leftovers = sorted(str(p.relative_to(plugin_dir)) for p in plugin_dir.rglob("*") if p.is_file())
            reporter.warn(
                STEP, f"left {plugin_dir} in place: it holds files we did not install: {leftovers[:5]}"
            )
    reporter.info(STEP, f"removed {removed} files and {DESKTOP_FILE} from {pykrita}")
    change = record.get("kritarc")
    if not change:
        reporter.info("kritarc", f"left as it was ({PLUGIN_NAME} was enabled before install.py ran)")
    else:
        rc = kritarc.KritarcChange.from_json(change)
        if kritarc.disable(Path(rc.path), rc):
            reporter.info("kritarc", f"removed {rc.key} from {rc.path}")
        else:
            reporter.info("kritarc", f"{rc.key} was already gone from {rc.path}")


def _linked(plugin_dir: Path, reporter: Reporter) -> bool:
    """A plugin folder that is a link (a developer's working copy) is not ours: never write in it."""
    if not _is_link(plugin_dir):
        return False
    reporter.warn(
        STEP,
        f"{plugin_dir} is a link to {os.path.realpath(plugin_dir)}: left alone "
        "(remove the link to let install.py manage the plugin)",
    )
    return True


def _is_link(path: Path) -> bool:
    """A symlink, or a Windows junction (`mklink /J`, which is_symlink() does not see before Python 3.12)."""
    if path.is_symlink() or getattr(path, "is_junction", lambda: False)():
        return True
    if not path.exists():
        return False
    real = os.path.realpath(path)
    expected = os.path.join(os.path.realpath(path.parent), path.name)  # linked parents are fine
    return os.path.normcase(real) != os.path.normcase(expected)


def _prune_empty_dirs(root: Path) -> None:
    if not root.is_dir():
        return
    for path in sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):  # not empty: keep it
            path.rmdir()
