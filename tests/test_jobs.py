"""labkit.jobs: one process pool for every paper, whose finished jobs survive a killed run."""

from __future__ import annotations

import os

import pytest

from labkit import jobs


def _square(job: tuple[str, int]) -> int:
    folder, x = job
    with open(os.path.join(folder, "calls"), "a") as f:  # one line per call actually made
        f.write(f"{x}\n")
    if x == 3 and os.path.exists(os.path.join(folder, "fail")):
        raise RuntimeError("killed")
    return x * x


def _calls(tmp_path) -> list[int]:
    return sorted(int(line) for line in (tmp_path / "calls").read_text().split())


@pytest.mark.parametrize("workers", [1, 2])
def test_finished_jobs_are_not_run_again_after_a_failure(tmp_path, monkeypatch, workers):
    monkeypatch.setenv(jobs.CACHE_ENV, str(tmp_path / "cache"))
    todo = [(str(tmp_path), x) for x in range(5)]
    (tmp_path / "fail").touch()
    with pytest.raises(RuntimeError, match="killed"):
        jobs.run_jobs(_square, todo, workers=workers, progress=False)
    (tmp_path / "fail").unlink()
    assert jobs.run_jobs(_square, todo, workers=workers, progress=False) == [0, 1, 4, 9, 16]
    resumed = len(_calls(tmp_path))
    assert jobs.run_jobs(_square, todo, workers=workers, progress=False) == [0, 1, 4, 9, 16]
    assert len(_calls(tmp_path)) == resumed, "a finished job ran again"
    if workers == 1:  # in order: 0, 1, 2 finished and 3 failed; the rerun computes only 3 and 4
        assert _calls(tmp_path) == [0, 1, 2, 3, 3, 4]


def test_without_a_cache_folder_every_job_runs(tmp_path, monkeypatch):
    monkeypatch.delenv(jobs.CACHE_ENV, raising=False)
    todo = [(str(tmp_path), x) for x in range(3)]
    assert jobs.run_jobs(_square, todo, progress=False) == jobs.run_jobs(_square, todo, progress=False) == [0, 1, 4]
    assert _calls(tmp_path) == [0, 0, 1, 1, 2, 2]


def test_a_job_key_depends_on_the_inputs_and_the_function():
    assert jobs.job_key(_square, ("a", 1)) == jobs.job_key(_square, ("a", 1))
    assert jobs.job_key(_square, ("a", 1)) != jobs.job_key(_square, ("a", 2))
    assert jobs.job_key(_square, ("a", 1)) != jobs.job_key(_calls, ("a", 1))
