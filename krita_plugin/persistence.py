"""The panel's settings in Krita's settings (kritarc): the connection and the generation settings, restored at
start and saved when they change. Per-document choices (guidance layers) live in the document instead
(document_state)."""

from __future__ import annotations

from typing import Any

from .panel import Panel
from .settings import ConnectionSettings, GenerationSettings

SETTINGS_GROUP = "krita_live_diffusion"


def restore(panel: Panel, app: Any) -> None:
    read = getattr(app, "readSetting", None)
    if read is None:
        return
    default = panel.connection().address
    panel.set_connection(
        ConnectionSettings(
            read(SETTINGS_GROUP, "address", default) or default,
            read(SETTINGS_GROUP, "token", ""),
            read(SETTINGS_GROUP, "ca_file", ""),
        )
    )
    saved = read(SETTINGS_GROUP, "generation", "")
    if saved:
        panel.set_settings(GenerationSettings.from_json(saved))
    for name, section in panel.sections.items():
        state = read(SETTINGS_GROUP, f"section_{name}", "")
        if state in ("open", "closed"):
            section.set_expanded(state == "open")


def save(panel: Panel, app: Any) -> None:
    write = getattr(app, "writeSetting", None)
    if write is None:
        return
    connection = panel.connection()
    write(SETTINGS_GROUP, "address", connection.address)
    write(SETTINGS_GROUP, "token", connection.token)
    write(SETTINGS_GROUP, "ca_file", connection.ca_file)
    write(SETTINGS_GROUP, "generation", panel.settings().to_json())
    for name, section in panel.sections.items():
        write(SETTINGS_GROUP, f"section_{name}", "open" if section.body.isVisibleTo(section) else "closed")
