"""`python -m grounding.cli`."""

import sys

from grounding.cli import main

sys.exit(main())
