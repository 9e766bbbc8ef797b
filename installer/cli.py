"""`python install.py`: the whole set-up in one idempotent command (and `--uninstall` to take it back)."""

from __future__ import annotations

import argparse
import shlex
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

from installer import plugin
from installer.download import Downloader, mirror_from_env
from installer.krita_paths import target_profiles
from installer.manifest import Manifest, ManifestError, UnknownModelSetError, load_manifest
from installer.models import ModelOptions, purge_downloads, run_models_step
from installer.report import Reporter
from installer.vendor import VendorError, find_websockets
from installer.venv import FLAVOURS, FlavourChoice, detect_flavour, ensure_venv, venv_python


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="install.py",
        description="Install Krita Live Diffusion: the Krita plugin, the backend's environment, the models.",
    )
    where = parser.add_argument_group("where")
    where.add_argument(
        "--krita-dir", type=Path, help="Krita's resource folder (holding pykrita/) or pykrita/ itself"
    )
    where.add_argument("--kritarc", type=Path, help="Krita's settings file (default: the platform's kritarc)")
    where.add_argument(
        "--venv", type=Path, help="the backend's virtual environment (default: .venv in the repo)"
    )
    where.add_argument(
        "--models-dir",
        type=Path,
        help="models folder to use: may be an existing ComfyUI or A1111 models folder",
    )
    torch = parser.add_argument_group("torch")
    torch.add_argument(
        "--python", type=Path, help="interpreter that creates the venv (default: the one running install.py)"
    )
    torch.add_argument("--torch", choices=FLAVOURS, help="torch build to install (default: detected)")
    torch.add_argument("--torch-index-url", help="package index for torch (overrides the flavour's default)")
    models = parser.add_argument_group("models")
    models.add_argument(
        "--models",
        metavar="SETS",
        help="model sets to fetch, comma-separated: sd15 (the default), sdxl, sd15,sdxl, or all (every set "
        "and add-on); add-ons come on top of the named sets, never by default: sd15,guidance adds "
        "ControlNets, the 'from image' estimators and IP-Adapter reference images (several GB), guidance "
        "alone adds them to the default set (models/manifest.json's families and addons)",
    )
    models.add_argument("--mirror", default=mirror_from_env(), help="base URL replacing the model URLs' host")
    models.add_argument(
        "--verify", action="store_true", help="check the sha256 of model files already present"
    )
    steps = parser.add_argument_group("steps")
    steps.add_argument("--offline", action="store_true", help="never touch the network")
    steps.add_argument(
        "--skip-venv", action="store_true", help="do not create or update the virtual environment"
    )
    steps.add_argument("--skip-plugin", action="store_true", help="do not install the Krita plugin")
    steps.add_argument("--skip-models", action="store_true", help="do not look for or download models")
    steps.add_argument("--run", action="store_true", help="start the backend when done")
    steps.add_argument("--uninstall", action="store_true", help="remove the plugin and its kritarc key")
    steps.add_argument(
        "--purge-models", action="store_true", help="with --uninstall: also delete downloaded models"
    )
    return parser


def main(argv: Sequence[str] | None = None, repo: Path | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    repo = (repo or Path(__file__).resolve().parent.parent).resolve()
    reporter = Reporter()
    venv = (args.venv or repo / ".venv").absolute()
    profiles = target_profiles(args.krita_dir, args.kritarc)

    if args.uninstall:
        for profile in profiles:
            plugin.uninstall(profile, reporter)
        if args.purge_models:
            purge_downloads(repo, reporter)
        else:
            reporter.info("models", "kept (use --purge-models to delete downloaded models)")
        return reporter.exit_code()

    manifest: Manifest | None = None
    manifest_problem = ""  # reported in the model step, after the steps that don't need the manifest
    if not args.skip_models:
        try:
            manifest = load_manifest(repo / "models" / "manifest.json")
            manifest.choose(args.models)
        except ManifestError as exc:
            manifest_problem = str(exc)
        except UnknownModelSetError as exc:
            parser.error(str(exc))  # a typo in --models stops everything before any work (exit code 2)

    if args.skip_venv:
        reporter.info("venv", "skipped (--skip-venv)")
    else:
        flavour = FlavourChoice(args.torch, "chosen with --torch") if args.torch else detect_flavour()
        ensure_venv(
            venv,
            repo,
            flavour,
            reporter,
            index_url=args.torch_index_url,
            offline=args.offline,
            base_python=args.python,
        )

    if args.skip_plugin:
        reporter.info("plugin", "skipped (--skip-plugin)")
    else:
        start = start_hint(str(repo), [str(venv_python(venv)), "-m", "backend"])
        _install_plugin(repo, venv, args.offline, profiles, reporter, start)

    if args.skip_models:
        reporter.info("models", "skipped (--skip-models)")
    elif manifest is None:
        reporter.fail("models", manifest_problem)
    else:
        options = ModelOptions(args.models_dir, args.offline, args.verify, args.mirror, args.models)
        run_models_step(repo, manifest, options, Downloader(), reporter)

    command = [str(venv_python(venv)), "-m", "backend"]
    if args.run:
        return _run_backend(command, repo, reporter)
    reporter.info("start", f"start the backend with: {start_hint(str(repo), command)}")
    reporter.info("start", "then (re)start Krita: the plugin is enabled and connects to the backend")
    _summary(reporter)
    return reporter.exit_code()


def _install_plugin(
    repo: Path, venv: Path, offline: bool, profiles: list, reporter: Reporter, start_command: str
) -> None:
    try:
        websockets = find_websockets(venv if venv.exists() else None, offline)
    except VendorError as exc:
        reporter.fail("plugin", f"cannot vendor websockets: {exc}")
        return
    for profile in profiles:
        try:
            plugin.install(profile, repo, websockets, reporter, start_command)
        except plugin.PluginSourceError as exc:
            reporter.fail("plugin", str(exc))
            return
        except OSError as exc:
            reporter.fail("plugin", f"installing into {profile.pykrita} failed: {exc}")


def _run_backend(command: list[str], repo: Path, reporter: Reporter) -> int:
    if not Path(command[0]).exists():
        reporter.fail("start", f"{command[0]} does not exist: run without --skip-venv first")
        return reporter.exit_code()
    _summary(reporter)
    # The backend starts even with models missing: it answers handshakes and reports what it lacks.
    reporter.info("start", f"starting the backend: {shell_line(command)} (Ctrl+C stops it)")
    try:
        return subprocess.call(command, cwd=repo)
    except KeyboardInterrupt:
        return 130


def shell_line(parts: Sequence[str], windows: bool | None = None) -> str:
    """A command line to paste into the platform's shell: shlex's single quotes mean nothing to cmd.exe,
    and every Windows path (backslashes) would get them."""
    windows = sys.platform.startswith("win") if windows is None else windows
    return subprocess.list2cmdline(list(parts)) if windows else shlex.join(parts)


def start_hint(repo: str, command: Sequence[str], windows: bool | None = None) -> str:
    windows = sys.platform.startswith("win") if windows is None else windows
    cd = ["cd", "/d", repo] if windows else ["cd", repo]  # /d: the repo may be on another drive
    return f"{shell_line(cd, windows)} && {shell_line(command, windows)}"


def _summary(reporter: Reporter) -> None:
    if reporter.failures:
        reporter.info("done", f"finished with {len(reporter.failures)} error(s):")
        for failure in reporter.failures:
            reporter.detail(failure.splitlines()[0])
    elif reporter.missing_required:
        reporter.info(
            "done", f"set up, but {len(reporter.missing_required)} required model file(s) are missing"
        )
    else:
        reporter.info("done", "everything is in place")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
