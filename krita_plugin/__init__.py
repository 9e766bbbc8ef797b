"""Krita Live Diffusion: a docker that paints with a local realtime SD1.5/LCM backend.

Krita imports this package at start-up; it registers the extension and the docker. Outside Krita (tests,
tooling) importing it does nothing, so the logic modules can be used without the `krita` module.
"""

from __future__ import annotations

try:
    import krita as _krita
except ImportError:  # not running inside Krita
    _krita = None

if _krita is not None and hasattr(_krita, "Krita"):
    from .docker import register

    register(_krita)
