"""Loops that feed the models, the indexes they train against, and the checkpoints they write."""
