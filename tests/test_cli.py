"""The command line's error convention: a user error is one line `revtal <command>: error: ...`, exit code 2; the
traceback only with --debug or REVTAL_DEBUG=1."""

import pytest

from revtal.cli import main as revtal_main


def _error_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.mark.parametrize("argv, names", [
    (["train", "absent.yaml"], ["absent.yaml"]),
    (["detect", "clip.mp4", "--checkpoint", "absent.pt", "--out", "x"], ["absent.pt"]),
    (["train", "--set", "optim.epochs"], ["--set", "key=value"]),
])
def test_user_errors_are_one_line_with_exit_code_2(argv, names, capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("REVTAL_DEBUG", raising=False)
    monkeypatch.chdir(tmp_path)
    assert revtal_main(argv) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1, lines
    assert lines[0].startswith(f"revtal {argv[0]}: error: ")
    assert all(name in lines[0] for name in names)


@pytest.mark.parametrize("how", ["flag-before", "flag-after", "env"])
def test_debug_shows_the_traceback(how, capsys, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("REVTAL_DEBUG", raising=False)
    argv = ["train", "absent.yaml"]
    if how == "flag-before":
        argv = ["--debug"] + argv
    elif how == "flag-after":
        argv = argv + ["--debug"]
    else:
        monkeypatch.setenv("REVTAL_DEBUG", "1")
    assert revtal_main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err
    assert err.strip().splitlines()[-1].startswith("revtal train: error: config file not found: absent.yaml")


def test_a_multi_line_message_is_cut_to_its_first_line(capsys, monkeypatch):
    import revtal.cli as cli

    class Failing:
        @staticmethod
        def add_arguments(parser):
            pass

        @staticmethod
        def run(args):
            raise ValueError("checkpoint x.pt does not fit the model: 3 missing keys\n  a\n  b\n  c")

    monkeypatch.delenv("REVTAL_DEBUG", raising=False)
    monkeypatch.setattr(cli, "_load", lambda name: Failing)
    assert revtal_main(["eval"]) == 2
    lines = _error_lines(capsys)
    assert lines == ["revtal eval: error: checkpoint x.pt does not fit the model: 3 missing keys "
                     "(details: rerun with --debug)"]


def test_bugs_are_not_disguised_as_user_errors(monkeypatch):
    import revtal.cli as cli

    class Buggy:
        @staticmethod
        def add_arguments(parser):
            pass

        @staticmethod
        def run(args):
            raise ZeroDivisionError("a bug")

    monkeypatch.setattr(cli, "_load", lambda name: Buggy)
    with pytest.raises(ZeroDivisionError):
        revtal_main(["eval"])


def test_openmp_waits_passively_set_before_any_command_loads(monkeypatch):
    import os
    import subprocess
    import sys

    import revtal.cli as cli

    seen = []

    class Command:
        add_arguments = staticmethod(lambda parser: None)
        run = staticmethod(lambda args: 0)

    def load(name):
        seen.append(os.environ.get("OMP_WAIT_POLICY"))
        return Command

    monkeypatch.setattr(cli, "_load", load)
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert cli.main(["synth"]) == 0 and seen and set(seen) == {"PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's choice wins
    seen.clear()
    assert cli.main(["synth"]) == 0 and set(seen) == {"ACTIVE"}
    # the setting only works while torch (and with it OpenMP) is not loaded yet: the CLI module must not import it
    code = "import sys, revtal.cli; assert 'torch' not in sys.modules, 'revtal.cli imports torch'"
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("errno_name, remedy", [("EROFS", "choose a writable output directory (--out)"),
                                                ("ENOSPC", "free space or choose another output directory")])
def test_a_read_only_or_full_disk_is_one_line_naming_the_file(errno_name, remedy, capsys, monkeypatch, tmp_path):
    import errno
    import json

    gt, pred, out = tmp_path / "gt.json", tmp_path / "pred.json", tmp_path / "scores" / "eval.json"
    gt.write_text(json.dumps({"database": {"v1": {"subset": "validation", "duration": 10.0, "annotations": [
        {"segment": [1.0, 4.0], "label": "a"}]}}}))
    pred.write_text(json.dumps({"results": {"v1": [{"segment": [1.0, 4.0], "label": "a", "score": 0.9}]}}))

    def storage_error(*args, **kwargs):
        code = getattr(errno, errno_name)
        raise OSError(code, "storage error")

    monkeypatch.setattr("tempfile.mkstemp", storage_error)
    monkeypatch.delenv("REVTAL_DEBUG", raising=False)
    assert revtal_main(["evaluate", "--gt", str(gt), "--pred", str(pred), "--json", str(out)]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith(f"revtal evaluate: error: cannot write {out}: ")
    assert remedy in lines[0]
