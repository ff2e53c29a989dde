"""Output directories: a run is never overwritten by accident; output names never collide."""

import pytest

from revtal.engine.rundir import (
    OutputExistsError, claim_output_dir, claim_run_dir, default_eval_dir, unique_output_names,
)


def test_a_run_directory_is_refused_naming_resume_and_overwrite(tmp_path):
    run = tmp_path / "run"
    claim_run_dir(run, resume=False, overwrite=False)  # new: fine
    (run / "best.pt").write_bytes(b"the best model")
    (run / "data").mkdir()
    (run / "data" / "annotations.json").write_text("{}")
    with pytest.raises(OutputExistsError) as error:
        claim_run_dir(run, resume=False, overwrite=False)
    assert "already holds a training run (best.pt)" in str(error.value)
    assert f"--resume {run / 'last.pt'}" in str(error.value) and "--overwrite" in str(error.value)
    assert (run / "best.pt").read_bytes() == b"the best model"
    claim_run_dir(run, resume=True, overwrite=False)
    assert (run / "best.pt").exists()
    claim_run_dir(run, resume=False, overwrite=True)
    assert not (run / "best.pt").exists() and (run / "data" / "annotations.json").exists()  # the data cache stays
    with pytest.raises(Exception, match="pass one of them"):
        claim_run_dir(run, resume=True, overwrite=True)


def test_command_outputs_are_refused_unless_overwrite(tmp_path):
    out = tmp_path / "features"
    claim_output_dir(out, suffix=".npy", overwrite=False, what="features")
    (out / "a.npy").write_bytes(b"")
    (out / ".a.npy.123.abcdefgh.tmp").write_bytes(b"")  # left by a killed write
    with pytest.raises(OutputExistsError, match=r"already holds features \(a\.npy\)"):
        claim_output_dir(out, suffix=".npy", overwrite=False, what="features")
    claim_output_dir(out, suffix=".npy", overwrite=True, what="features")
    assert list(out.iterdir()) == []
    assert default_eval_dir(tmp_path / "runs" / "x" / "best.pt") == tmp_path / "runs" / "x" / "eval" / "best"


def test_unique_output_names(tmp_path):
    a, b = tmp_path / "a" / "bikes.mp4", tmp_path / "b" / "bikes.mp4"
    assert unique_output_names([a, b, tmp_path / "a" / "cat.mkv"]) == ["a_bikes", "b_bikes", "cat"]
    deep = [tmp_path / "x" / "same" / "v.mp4", tmp_path / "y" / "same" / "v.mp4"]
    assert unique_output_names(deep) == ["x_same_v", "y_same_v"]
    assert unique_output_names([a, a]) == ["bikes", "bikes_2"]


def test_resume_changes_are_listed_and_refused_unless_allowed():
    from revtal.engine.resume import check_resume_changes, config_changes, merge

    stored = {"optim": {"epochs": 4, "head_lr": 1e-3}, "data": {"batch_size": 4}, "train": {"out_dir": "runs/x"}}
    given = merge(stored, {"optim": {"epochs": 2}, "train": {"out_dir": "runs/y"}})
    assert given["optim"] == {"epochs": 2, "head_lr": 1e-3} and stored["optim"]["epochs"] == 4
    changes = config_changes(stored, given)
    assert changes == [("optim.epochs", 4, 2)]  # where the run lives is not part of the recipe
    with pytest.raises(Exception, match=r"changes 1 value\(s\).*optim\.epochs: 4 -> 2.*--allow-config-change"):
        check_resume_changes("runs/x/last.pt", changes, allow=False)
    assert check_resume_changes("runs/x/last.pt", changes, allow=True) == ["config change on resume: optim.epochs: 4 -> 2"]
    assert check_resume_changes("runs/x/last.pt", config_changes(stored, merge(stored, {})), allow=False) == []


def test_a_directory_whose_run_never_wrote_a_checkpoint_is_set_aside_not_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("first attempt")
    (run / "metrics.csv").write_text("step,key,value\n")
    claim_run_dir(run, resume=False, overwrite=False)
    assert (run / "attempt-1" / "config.yaml").read_text() == "first attempt"
    assert not (run / "config.yaml").exists() and (run / "attempt-1" / "metrics.csv").exists()
    (run / "config.yaml").write_text("second attempt")
    claim_run_dir(run, resume=False, overwrite=False)
    assert (run / "attempt-2" / "config.yaml").read_text() == "second attempt"


def test_one_writer_per_run_directory_and_a_dead_writers_lock_is_taken_over(tmp_path):
    import subprocess
    import sys

    from revtal.engine.rundir import LOCK_NAME, RunInUseError, release_run_dir

    run = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; from revtal.engine.rundir import lock_run_dir; "
         f"lock_run_dir({str(run)!r}); print('locked', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunInUseError, match=rf"being written by another revtal run \(pid {holder.pid} on"):
            claim_run_dir(run, resume=False, overwrite=True)
        with pytest.raises(RunInUseError):
            claim_run_dir(run, resume=True, overwrite=False)
    finally:
        holder.kill()
        holder.wait()
    assert (run / LOCK_NAME).exists()  # the dead process's lock file stays behind ...
    claim_run_dir(run, resume=False, overwrite=True)  # ... and is taken over
    release_run_dir(run)
