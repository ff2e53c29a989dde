"""One module per ``revtal X`` command: argument parsing and a call into the library, nothing else."""
