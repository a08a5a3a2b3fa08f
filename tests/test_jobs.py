"""thinjax.jobs: a study's one way to run anything (a command in its own process)."""

import pytest

from thinjax import jobs


def test_last_json_is_the_commands_result_line():
    text = 'loading\n{"not": "last"}\nerror-free text\n{"top1": 12.5}\nW0000 a log line\n'
    assert jobs.last_json(text) == {"top1": 12.5}
    assert jobs.last_json("{broken\n[1, 2]\n") is None


def test_a_job_runs_the_command_logs_it_and_returns_its_result(tmp_path):
    log = tmp_path / "run" / "evaluate.log"
    with pytest.raises(jobs.JobFailed) as e:
        jobs.run(jobs.Job("evaluate", ("--checkpoint=" + str(tmp_path / "nope"),
                                       "--data=sample:cifar10"), str(log)))
    assert e.value.returncode == 2 and str(log) in str(e.value)
    assert "error:" in e.value.tail and "Traceback" not in e.value.tail
    text = log.read_text()
    assert text.startswith("+ -m thinjax.commands.evaluate --checkpoint=") and "--json" in text
    with pytest.raises(ValueError, match="use one of train, prune, evaluate"):
        jobs.Job("study", (), str(log))
