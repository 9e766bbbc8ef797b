"""The local realtime diffusion backend: `python -m backend --help`."""
