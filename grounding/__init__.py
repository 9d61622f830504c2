"""grounding: answers about a company's code, cited to file and line, from Postgres/pgvector."""

from grounding import training  # noqa: F401  (registers the encoders training defines with embed's loader)
from grounding.answer.ask import ask, ask_stream
from grounding.answer.completion import Completion, complete
from grounding.index.ingest import ingest
from grounding.records import Answer, Chunk, Citation, Hit, IngestReport

__all__ = [
    "Answer",
    "Chunk",
    "Citation",
    "Completion",
    "Hit",
    "IngestReport",
    "ask",
    "ask_stream",
    "complete",
    "ingest",
]
