"""Exit codes shared by the subcommands."""

EXIT_ERROR = 1  # a GroundingError: one line on stderr
EXIT_USAGE = 2  # bad arguments, as argparse itself exits
