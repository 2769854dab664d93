"""Rewards: code tests through the real bubblewrap sandbox, and exact answers."""

import gzip
import json
from pathlib import Path

import pytest

from rl.rewards.code_tests import code_test_rewards
from rl.rewards.exact_answer import exact_answer_reward, extract_answer
from rl.tasks import TaskFileError, load_tasks

DATA = Path(__file__).resolve().parents[1] / "data"


@pytest.fixture
def runner(sandbox_runner):
    return sandbox_runner


@pytest.mark.parametrize("name", ["humaneval_sample.jsonl", "mbpp_sample.jsonl"])
def test_canonical_solutions_pass(runner, name):
    tasks = load_tasks(DATA / name)
    rewards = code_test_rewards(runner, tasks, [t.solution for t in tasks])
    assert all(r.passed and r.fraction == 1.0 for r in rewards), rewards


def test_wrong_solutions_fail_and_partial_ones_score_a_fraction(runner):
    add, running_max, palindrome = load_tasks(DATA / "humaneval_sample.jsonl")
    rewards = code_test_rewards(runner, [add, add, palindrome, running_max], [
        "    return a - b\n",          # passes only candidate(0, 0) == 0
        "    return a +\n",            # syntax error
        "    while True: pass\n",      # never finishes
        "    return xs if len(xs) == 2 else [max(xs[:i + 1]) for i in range(len(xs))]\n",  # fails [5, 4] only
    ], timeout_s=1)
    assert [r.passed for r in rewards] == [False, False, False, False]
    assert rewards[0].fraction == 0.25 and rewards[0].cases == 4
    assert (rewards[1].fraction, rewards[1].status) == (0.0, "failed")
    assert (rewards[2].fraction, rewards[2].status) == (0.0, "timeout")
    assert rewards[3].fraction == 0.5


def test_identical_completions_of_a_task_run_once_and_share_the_verdict(runner):
    add, running_max, _ = load_tasks(DATA / "humaneval_sample.jsonl")
    sent = []

    class Counting:
        def run(self, executions):
            sent.append(len(executions))
            return runner.run(executions)

    right, wrong = "    return a + b\n", "    return a - b\n"
    rewards = code_test_rewards(Counting(), [add, add, add, add, running_max],
                                [right, wrong, right, right, right], timeout_s=3)
    assert sent == [3], "three distinct programs: add right, add wrong, running_max with add's body"
    assert [r.passed for r in rewards] == [True, False, True, True, False]
    assert rewards[2] == rewards[0] == rewards[3]


def test_gzipped_task_files_load(tmp_path):
    src = (DATA / "mbpp_sample.jsonl").read_bytes()
    gz = tmp_path / "tasks.jsonl.gz"
    gz.write_bytes(gzip.compress(src))
    assert [t.id for t in load_tasks(gz)] == ["11", "12"]


@pytest.mark.parametrize("line, message", [
    ('{"task_id": 1, "text": "x"', "not valid JSON"),
    ('{"foo": 1}', "neither HumanEval"),
    ('[1, 2]', "expected a JSON object"),
    (json.dumps({"text": "t", "code": "c", "test_list": ["assert (("]}), "never closed"),
])
def test_malformed_line_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "bad.jsonl"
    path.write_text((DATA / "mbpp_sample.jsonl").read_text().splitlines()[0] + "\n" + line + "\n")
    with pytest.raises(TaskFileError, match=f"bad.jsonl:2: .*{message}"):
        load_tasks(path)


@pytest.mark.parametrize("completion, answer, reward", [
    ("so the total is 1,000.", "1000", 1.0),
    ("#### 0.5", "1/2", 1.0),
    ("The answer is \\boxed{3/4}.", "0.75", 1.0),
    ("that is 50%", "0.5", 1.0),
    ("costs $12.00", "12", 1.0),
    ("12 + 7 = 19", "19", 1.0),
    ("12 + 7 = 18", "19", 0.0),
    ("#### Paris", "paris", 1.0),
    ("no number here", "7", 0.0),
])
def test_exact_answer(completion, answer, reward):
    assert exact_answer_reward(completion, answer) == reward


def test_extract_prefers_marked_answers():
    assert extract_answer("3 then 4 #### 5") == "5"
    assert extract_answer("\\boxed{2} and later 9") == "2"
