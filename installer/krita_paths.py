"""Where Krita keeps Python plugins (pykrita/) and its settings file (kritarc) on each platform.

Krita uses Qt's generic data and config locations: on Linux `$XDG_DATA_HOME/krita` (default
~/.local/share/krita, which the AppImage shares) and `$XDG_CONFIG_HOME/kritarc`; the Flatpak keeps both
inside its sandbox under ~/.var/app/org.kde.krita/. Windows: %APPDATA%\\krita and %LOCALAPPDATA%\\kritarc.
macOS: ~/Library/Application Support/krita and ~/Library/Preferences/kritarc.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

FLATPAK_APP = Path(".var/app/org.kde.krita")


@dataclass(frozen=True)
class KritaProfile:
    name: str  # "linux", "flatpak", "windows", "macos" or "custom"
    resource_dir: Path  # the folder holding pykrita/
    kritarc: Path

    @property
    def pykrita(self) -> Path:
        return self.resource_dir / "pykrita"

    def exists(self) -> bool:
        """Krita has run with this profile (or someone prepared it)."""
        return self.resource_dir.is_dir() or self.kritarc.is_file()


def platform_profiles(
    platform: str | None = None, env: Mapping[str, str] | None = None, home: Path | None = None
) -> list[KritaProfile]:
    """Every profile Krita may use on this platform, the usual one first."""
    platform = platform or sys.platform
    env = os.environ if env is None else env
    home = home or Path(env.get("HOME") or env.get("USERPROFILE") or Path.home())
    if platform.startswith("win"):
        appdata = Path(env.get("APPDATA") or home / "AppData" / "Roaming")
        local = Path(env.get("LOCALAPPDATA") or home / "AppData" / "Local")
        return [KritaProfile("windows", appdata / "krita", local / "kritarc")]
    if platform == "darwin":
        library = home / "Library"
        return [
            KritaProfile(
                "macos", library / "Application Support" / "krita", library / "Preferences" / "kritarc"
            )
        ]
    data = Path(env.get("XDG_DATA_HOME") or home / ".local" / "share")
    config = Path(env.get("XDG_CONFIG_HOME") or home / ".config")
    flatpak = home / FLATPAK_APP
    return [
        KritaProfile("linux", data / "krita", config / "kritarc"),
        KritaProfile("flatpak", flatpak / "data" / "krita", flatpak / "config" / "kritarc"),
    ]


def target_profiles(
    krita_dir: Path | None,
    kritarc: Path | None = None,
    platform: str | None = None,
    env: Mapping[str, str] | None = None,
    home: Path | None = None,
) -> list[KritaProfile]:
    """The profiles to install into.

    With --krita-dir only that one (a Krita resource folder, or its pykrita/ folder itself). Otherwise
    every profile Krita has used here (a machine may have both the distribution's Krita and the Flatpak),
    or the usual one when Krita has not run yet.
    """
    profiles = platform_profiles(platform, env, home)
    if krita_dir is not None:
        resource = krita_dir.parent if krita_dir.name == "pykrita" else krita_dir
        return [KritaProfile("custom", resource.resolve(), kritarc or profiles[0].kritarc)]
    existing = [p for p in profiles if p.exists()] or profiles[:1]
    if kritarc is not None:
        existing = [KritaProfile(p.name, p.resource_dir, kritarc) for p in existing]
    return existing
