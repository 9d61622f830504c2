"""The copilot's ingests: grounding.service.jobs, shared with the HTTP API (one table of jobs per process)."""

from grounding.service.jobs import *  # noqa: F403
from grounding.service.jobs import DEPLOYMENT, POLL_SECONDS, IngestJob  # noqa: F401
