"""The config tree: recipes, dotted overrides, errors that name the field."""

import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import BaseModel

from runtime.core.config import FactoryConfig, all_field_paths, apply_override, load_config
from runtime.core.errors import ConfigError


def test_default_recipe_resolves_presets():
    cfg = load_config()
    assert cfg.model.build.preset == "tiny"
    assert cfg.model.build.hidden_size == 128 and cfg.model.build.vocab_size == 512
    assert cfg.placement.inference.replicas == 2


def test_overrides_are_parsed_as_yaml_values():
    cfg = load_config("default", [
        "placement.inference.replicas=3",
        "inference.sampling.temperature=0",
        "inference.sampling.stop=[a, b]",
        "model.build.preset=small",
        "model.build.num_layers=4",
    ])
    assert cfg.placement.inference.replicas == 3
    assert cfg.inference.sampling.temperature == 0.0
    assert cfg.inference.sampling.stop == ["a", "b"]
    assert cfg.model.build.num_layers == 4, "an explicit field beats the preset"
    assert cfg.model.build.hidden_size == 256, "unset fields come from the preset"


def test_unknown_key_names_the_path_and_suggests_the_right_one():
    with pytest.raises(ConfigError, match=r"unknown key inference\.replicas \(did you mean placement\.inference\.replicas\?\)"):
        load_config("default", ["inference.replicas=2"])


def test_wrong_type_names_the_path():
    with pytest.raises(ConfigError, match=r"inference\.max_model_len: .*integer.*'many'"):
        load_config("default", ["inference.max_model_len=many"])


def test_override_into_a_value_is_an_error():
    with pytest.raises(ConfigError, match="experiment.seed is a value, not a section"):
        apply_override({"experiment": {"seed": 1}}, "experiment.seed.x=2")


def test_missing_recipe_lists_known_ones():
    with pytest.raises(ConfigError, match=r"recipe not found: nope \(known recipes: .*default"):
        load_config("nope")


def test_invalid_yaml_recipe_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("experiment: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: not valid YAML"):
        load_config(str(bad))


def test_cross_field_check():
    with pytest.raises(ConfigError, match="hidden_size 130 is not divisible by num_heads 4"):
        load_config("default", ["model.build.hidden_size=130"])


def test_elastic_trainers_start_with_at_most_their_replicas():
    assert load_config("default", ["placement.trainer.min_replicas=1"]).placement.trainer.min_replicas == 1
    with pytest.raises(ConfigError, match=r"placement.trainer.min_replicas \(3\) is more than placement.trainer.replicas \(2\)"):
        load_config("default", ["placement.trainer.min_replicas=3"])


def test_post_training_stages_are_checked_before_any_work():
    with pytest.raises(ConfigError, match="dpo.steps needs dpo.pairs"):
        load_config("default", ["dpo.steps=3"])
    with pytest.raises(ConfigError, match="rl.algorithm"):
        load_config("default", ["rl.algorithm=ppo"])
    assert load_config("default", ["rl.algorithm=rloo"]).rl.algorithm == "rloo"


def _sections(model: type[BaseModel]):
    yield model
    for field in model.model_fields.values():
        if isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel):
            yield from _sections(field.annotation)


def test_every_field_has_a_docstring():
    missing = [f"{m.__name__}.{name}" for m in _sections(FactoryConfig)
               for name, field in m.model_fields.items() if not field.description]
    assert not missing, f"fields without a docstring: {missing}"
    assert "placement.inference.replicas" in all_field_paths()


def test_config_and_cli_import_without_heavy_modules():
    code = ("import sys, runtime.core.config, runtime.cli.main; heavy = [m for m in ('torch', 'ray', 'vllm') if m in sys.modules];"
            " print(heavy); sys.exit(1 if heavy else 0)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


def test_a_recipe_extends_another_through_base(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mine.yaml").write_text("base: default\nrl: {steps: 5}\nplacement: {inference: {num_cpus: 0.5}}\n")
    (tmp_path / "theirs.yaml").write_text("base: mine.yaml\nrl: {group_size: 4}\n")
    mine = load_config("mine")  # ./mine.yaml, found by name
    assert mine == load_config("default", ["rl.steps=5", "placement.inference.num_cpus=0.5"])
    assert mine.placement.inference.replicas == 2, "a mapping merges key by key over its base"
    assert load_config("theirs") == load_config("default", ["rl.steps=5", "placement.inference.num_cpus=0.5",
                                                            "rl.group_size=4"])


def test_base_recipes_that_form_a_cycle_are_one_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match=r"base recipes form a cycle \(a.yaml -> b.yaml -> a.yaml\)"):
        load_config(tmp_path / "a.yaml")


RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES)
def test_every_recipe_resolves_and_what_it_reads_parses(recipe, tmp_path, monkeypatch):
    from runtime.jobs import preflight

    monkeypatch.chdir(tmp_path)  # files a recipe names are found beside it, from anywhere
    cfg = load_config(recipe)
    preflight.check(cfg)
    named = [p for s in [*cfg.data.sources, *cfg.rl.tasks.sources] for p in s.paths]
    assert all(Path(p).is_absolute() and Path(p).is_file() for p in named), named


def test_the_gpu_recipe_on_a_cpu_cluster_says_what_is_missing():
    from runtime.jobs.preflight import PreflightError, check_resources

    with pytest.raises(PreflightError, match=r"^placement.inference: needs 2 GPUs and the cluster has 0"):
        check_resources(load_config("gpu-small"), {"CPU": 8.0, "memory": 1e10})
    check_resources(load_config("gpu-small"), {"CPU": 8.0, "GPU": 4.0})
