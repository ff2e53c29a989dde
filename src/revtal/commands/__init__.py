"""The ``revtal`` commands: one module per ``revtal X``, each holding ``add_arguments(parser)`` (argument parsing
alone) and ``run(args) -> int`` (the call into the library). :mod:`revtal.cli` imports only the module of the
command that runs, so these modules may import the library at their top; no module outside this package parses
arguments."""
