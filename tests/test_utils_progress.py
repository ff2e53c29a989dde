"""Progress output: a live bar on a terminal, one plain line per loop in a log."""

import io
import re

from revtal.utils.progress import LineProgress, progress


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_one_line_per_loop_not_carriage_return_redraws():
    log = io.StringIO()
    bar = progress(range(500), desc="epoch 1/2 [dr2net]", stream=log)
    assert isinstance(bar, LineProgress)
    for step in bar:
        bar.set_postfix(loss=1.0 / (step + 1))
    text = log.getvalue()
    assert "\r" not in text and text.count("\n") == 1
    assert re.fullmatch(r"epoch 1/2 \[dr2net\]: 500/500 it in \d+\.\ds, loss=0\.002\n", text)
    quiet = io.StringIO()
    for _ in progress(range(3), desc="evaluate", leave=False, stream=quiet):
        pass
    assert quiet.getvalue() == ""


def test_a_terminal_gets_the_live_bar():
    terminal = _Terminal()
    for _ in progress(range(3), desc="synth videos", stream=terminal, mininterval=0):
        pass
    assert "\r" in terminal.getvalue() and "synth videos" in terminal.getvalue()
