"""RL scoring of a step: code tasks through the real sandbox, answer tasks by their exact answer."""

import json
import random

import pytest

from rl.procedural import task_record
from rl.tasks import AnswerTask, CodeTask, TaskFileError, parse_line
from runtime.data.corpus import arithmetic_task
from runtime.core.generation import Completion, GenerationResult
from rl.scoring import score
from runtime.jobs.sft_loop import reference


@pytest.fixture
def runner(sandbox_runner):
    return sandbox_runner


def result(*texts):
    return GenerationResult("r", "p", [1], [Completion(t, [1], [0.0], "stop") for t in texts], version=3, server="s")


def test_a_step_mixing_code_and_answer_tasks_scores_each_its_own_way(runner):
    code = parse_line(json.dumps(task_record(random.Random(0))), "doc 0")
    answer = parse_line(json.dumps(arithmetic_task(random.Random(0))), "doc 1")
    assert isinstance(code, CodeTask) and isinstance(answer, AnswerTask)
    rewards, statuses = score(runner, [code, answer], [
        result(code.solution, " x +", code.solution + "\nprint('ignored: only the first line counts')"),
        result(f" {answer.answer}", " 0.5", f" {answer.answer}\n1 + 1 = 3"),
    ])
    assert rewards.tolist() == [[1.0, 0.0, 1.0], [1.0, float(answer.answer == "0.5"), 1.0]]
    assert statuses == [["ok", "failed", "ok"], ["exact"] * 3]


def test_answer_tasks_parse_and_give_sft_their_answer():
    task = parse_line('{"id": "q1", "prompt": "2 + 2 =", "answer": "4"}', "tasks.jsonl:1")
    assert task == AnswerTask("q1", "2 + 2 =", "4") and reference(task) == " 4\n"
    with pytest.raises(TaskFileError, match=r"tasks.jsonl:2: neither HumanEval .* nor an answer task"):
        parse_line('{"prompt": "2 + 2 ="}', "tasks.jsonl:2")


def test_a_code_task_file_refuses_answer_tasks_by_line(tmp_path):
    from rl.tasks import load_tasks

    path = tmp_path / "tasks.jsonl"
    path.write_text(json.dumps(task_record(random.Random(0))) + "\n" + '{"prompt": "1 + 1 =", "answer": "2"}\n')
    with pytest.raises(TaskFileError, match=rf"{path}:2: an answer task"):
        load_tasks(path)


def generous(prompt, completion, answer):
    return 1.0 if completion.strip() else 0.5


def test_a_reward_of_ones_own_scores_answer_tasks(runner):
    from rl.scoring import answer_reward_of

    answer = AnswerTask("q", "2 + 2 =", "4")
    rewards, statuses = score(runner, [answer], [result(" 5", " ")],
                              answer_reward_of("tests.unit.test_rl_scoring:generous"))
    assert rewards.tolist() == [[1.0, 0.5]] and statuses == [["custom", "custom"]]


@pytest.mark.parametrize("path, message", [
    ("nocolon", "is not of the form module:function"),
    ("no_such_module_here:f", "cannot import no_such_module_here:f"),
    ("json:loads_nothing", "cannot import json:loads_nothing"),
    ("tests.unit.test_rl_scoring:MARGIN_NOT_HERE", "cannot import"),
])
def test_a_reward_that_cannot_be_had_is_one_line_naming_rl_reward(path, message):
    from rl.rewards.custom import RewardError, load_reward

    with pytest.raises(RewardError, match=rf"^rl.reward: .*{message}"):
        load_reward(path)


def test_a_reward_outside_zero_to_one_is_refused(runner):
    from rl.rewards.custom import RewardError, checked

    with pytest.raises(RewardError, match=r"rl.reward: mine returned 7 for a completion"):
        score(runner, [AnswerTask("q", "p", "1")], [result(" 1")], checked(lambda p, c, a: 7, "mine"))
