"""A failed job shows its cause: the exception and the last frames of its traceback, read past the
progress bars in its log; a process killed before it could say why is called killed."""
import functools
import os

import pytest

from interpbench.launch.base import failure_cause, outcome_line, traceback_summary
from interpbench.launch.local import run_local

SUBMITIT_TRACE = (
    "Job (task=0) failed during processing with trace:\n----------------------\n"
    "Traceback (most recent call last):\n"
    '  File "/x/submitit/core/submission.py", line 55, in process_job\n    result = delayed.result()\n'
    "             ^^^^^^^^^^^^^^^^\n"
    '  File "/x/interpbench/engine/train.py", line 301, in _train\n'
    '    raise FloatingPointError(f"{spec.model}: loss became nan")\n'
    "FloatingPointError: fa_cnn: loss became nan at epoch 2, step 17\n\n----------------------\n"
    "You can check full logs with 'job.stderr(0)' and 'job.stdout(0)'or at paths:\n"
    "  - /tmp/jobs/1_0_log.err\n  - /tmp/jobs/1_0_log.out")


def test_the_exception_comes_first_then_the_last_frames():
    assert traceback_summary(SUBMITIT_TRACE) == (
        "FloatingPointError: fa_cnn: loss became nan at epoch 2, step 17\n"
        '  File "/x/submitit/core/submission.py", line 55, in process_job\n'
        "    result = delayed.result()\n"
        '  File "/x/interpbench/engine/train.py", line 301, in _train\n'
        '    raise FloatingPointError(f"{spec.model}: loss became nan")')
    assert traceback_summary("no traceback here") is None


def test_a_killed_job_is_said_killed_with_its_last_real_output(tmp_path):
    log = tmp_path / "1_0_log.err"
    log.write_text("fa_cnn: resuming after epoch 1\n\r 50%|#####     | 5/10 [00:01<00:01, 4.0it/s]"
                   "\r 60%|######    | 6/10 [00:01<00:01, 4.0it/s]")
    error = ("Job 11655 (task: 0) with path /tmp/x_result.pkl\nhas not produced any output (state: INTERRUPTED)\n"
             "Error stream produced:\n----------------------------------------\n\n"
             " 50%|#####     | 5/10 [00:01<00:01, 4.0it/s]")
    assert failure_cause(error, str(log), timeout_min=120) == (
        "the job's process was killed before it finished (state INTERRUPTED): out of memory (the kernel's "
        "out-of-memory killer), its time limit (launcher.timeout_min=120) or a signal; its last output: "
        "fa_cnn: resuming after epoch 1")


@pytest.mark.slow
def test_local_jobs_that_fail_show_their_cause(tmp_path):
    jobs = [("raises", functools.partial(int, "not a number")), ("aborts", functools.partial(os.abort)),
            ("works", functools.partial(int, "7"))]
    outcomes = {o.name: o for o in run_local(jobs, tmp_path, max_parallel=3, progress=False)}
    assert outcomes["works"].ok and outcomes["works"].value == 7
    assert outcomes["raises"].error.splitlines()[0] == "ValueError: invalid literal for int() with base 10: 'not a number'"
    assert outcome_line(outcomes["raises"]).startswith("ValueError: invalid literal for int() with base 10: "
                                                       "'not a number' (log: ")
    assert outcomes["aborts"].error.startswith("the job's process was killed before it finished (state ")
