"""nn.Modules and their config dataclasses, no I/O: realm.py, retro.py, retrofit.py; and checkpoint.py, which
writes a RETRO model with its config and rebuilds it from them (the one file read here, so that answer can
load what training wrote without importing training)."""
