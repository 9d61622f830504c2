"""Indexing: reading a checkout (sources, the only module that touches one), languages, secrets, chunking
(pure; tree-sitter queries as data in queries/*.scm), the encoders behind one Embedder ABC (embed), ingest,
reindex, refresh, and RETRO's chunk database with its tokenizer (retro_db, lm_tokenizer).

The encoders live here, below search, because ingest embeds chunks with the same encoder search embeds
questions with; encoders a higher stage defines (training's REALM towers) register with embed's loader."""
