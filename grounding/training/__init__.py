"""Loops that feed the models, the indexes they train against, and the checkpoints they write.

Importing this package (grounding/__init__.py does) registers the encoders training defines with the
loader ingest and search use, so that loader never imports training: an index version whose query
encoder is `realm:<checkpoint>#query` is served by RealmEncoder (torch loads when one is first asked for).
"""

from grounding.index.embed import register_encoder

register_encoder("realm:", "grounding.training.checkpoint:RealmEncoder")
