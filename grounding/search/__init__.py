"""Search: filters (the query language), fusion (rankings fused), retrieve (hybrid search over an index
version), rerank (the cross-encoder). The BM25 text analysis it shares with ingest is grounding.lexical."""
