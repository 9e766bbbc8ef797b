"""The logic behind install.py: standard library only, Python 3.10+ (it runs before any dependency exists)."""
