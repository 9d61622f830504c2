"""nn.Modules and their config dataclasses, no I/O: realm.py (and retro.py)."""
