"""Preference pairs: the playground's feedback export, read back by the reader DPO will use."""

import json

import pytest

from rl.preferences import PreferenceFileError, PreferencePair, read_preference_pairs
from serve.feedback import FeedbackStore


def test_feedback_becomes_pairs_of_liked_and_disliked_answers(tmp_path):
    store = FeedbackStore(tmp_path / "feedback.sqlite")
    store.add("v1", "v1", "2 + 2 =", "4", 1, "right")
    store.add("v0", "v0", "2 + 2 =", "5", -1)
    store.add("v0", "v0", "2 + 2 =", "22", -1)
    store.add("v1", "v1", "lonely prompt", "liked but unpaired", 1)
    path = tmp_path / "pairs.jsonl"
    path.write_text(store.export_jsonl())
    assert read_preference_pairs(path) == [PreferencePair("2 + 2 =", "4", "5"), PreferencePair("2 + 2 =", "4", "22")]
    assert json.loads(path.read_text().splitlines()[0])["comments"] == ["right"]


@pytest.mark.parametrize("line", ['{"prompt": "p", "chosen": "c"}', "not json", '{"prompt": 1, "chosen": "c", "rejected": "r"}'])
def test_malformed_pair_names_file_and_line(tmp_path, line):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "p", "chosen": "c", "rejected": "r"}) + "\n" + line + "\n")
    with pytest.raises(PreferenceFileError, match=r"pairs.jsonl:2: "):
        read_preference_pairs(path)
