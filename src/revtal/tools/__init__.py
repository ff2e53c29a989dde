"""Command-line tools around the reversible engine (``revtal errmap``, ``revtal selfcheck``): they build models
and print reports; :mod:`revtal.reversible` itself holds no CLI."""
