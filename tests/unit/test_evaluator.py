"""The Evaluator's suites and its regression rule, as plain logic (it runs on real actors in
tests/cluster/test_rl_loop.py, tests/fault/test_run_faults.py and tests/e2e/test_jobs.py)."""

import json
from pathlib import Path

import pytest

from actors.evaluator import Evaluator, suite_tasks
from rl.tasks import AnswerTask, CodeTask
from runtime.core.config import EvalSuite, load_config
from runtime.core.errors import ConfigError
from runtime.core.metrics import EvalMetrics

DATA = Path(__file__).parents[1] / "data"


def test_suites_read_humaneval_and_mbpp_files_and_answer_sets(tmp_path):
    humaneval = suite_tasks(EvalSuite(name="he", type="tasks", path=str(DATA / "humaneval_sample.jsonl"), tasks=2), 0)
    mbpp = suite_tasks(EvalSuite(name="mbpp", type="tasks", path=str(DATA / "mbpp_sample.jsonl"), tasks=2), 0)
    answers = tmp_path / "answers.jsonl"
    answers.write_text('{"prompt": "2 + 2 =", "answer": "4"}\n\n{"prompt": "3 + 4 =", "answer": "7"}\n')
    exact = suite_tasks(EvalSuite(name="sums", type="tasks", path=str(answers)), 0)
    assert len(humaneval) == 2 and len(mbpp) == 2 and all(isinstance(t, CodeTask) for t in humaneval + mbpp)
    assert [(t.prompt, t.answer) for t in exact] == [("2 + 2 =", "4"), ("3 + 4 =", "7")]
    assert isinstance(exact[0], AnswerTask)
    held_out = suite_tasks(EvalSuite(name="held-out", tasks=5), 0)
    assert len(held_out) == 5 and held_out[0].prompt == suite_tasks(EvalSuite(name="held-out", tasks=5), 0)[0].prompt


def test_a_file_suite_needs_its_path():
    with pytest.raises(ConfigError, match="suite 'he' has type tasks: give its path"):
        load_config("default", ["eval.suites=[{name: he, type: tasks}]"])


def test_a_drop_below_the_best_by_more_than_the_threshold_is_a_regression(tmp_path, capsys):
    cfg = load_config("default", ["eval.regression=0.1"])
    evaluator = Evaluator(cfg, tmp_path)
    evaluator.metrics = EvalMetrics("test")
    for version, score in ((2, 0.30), (3, 0.45), (4, 0.40), (5, 0.30)):
        evaluator._record({"version": version, "suite": "held-out", "score": score})
    rows = [json.loads(line) for line in (tmp_path / "evals.jsonl").read_text().splitlines()]
    assert [r.get("regression") for r in rows] == [None, None, None, {"best": 0.45, "best_version": 3}]
    assert "regression: eval held-out on v5: 0.300, down from 0.450 on v3" in capsys.readouterr().out


def test_a_judge_grade_is_the_first_number_of_its_answer_clamped():
    from actors.evaluator import grade

    assert [grade(t) for t in (" 7/10", "grade: 12", "0.5 maybe", "none", "-3")] == [7.0, 10.0, 0.5, None, 3.0]
