"""The only package that issues SQL. Callers use `store.<function>`; each module holds one concern."""

from grounding.store.access import *  # noqa: F403
from grounding.store.catalog import *  # noqa: F403
from grounding.store.evals import *  # noqa: F403
from grounding.store.removal import *  # noqa: F403
from grounding.store.retro import *  # noqa: F403
from grounding.store.search import *  # noqa: F403
from grounding.store.status import *  # noqa: F403
from grounding.store.tokens import *  # noqa: F403
from grounding.store.training import *  # noqa: F403
from grounding.store.versions import *  # noqa: F403
from grounding.store.writes import *  # noqa: F403
