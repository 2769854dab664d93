"""cluster.yaml is a valid Ray cluster-launcher config."""

import json
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def ray_schema() -> dict:
    import ray.autoscaler

    return json.loads((Path(ray.autoscaler.__file__).parent / "ray-schema.json").read_text())


def test_cluster_yaml_matches_rays_schema():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    jsonschema.validate(config, ray_schema())
    assert config["head_node_type"] in config["available_node_types"]
    assert any("[gpu]" in cmd for cmd in config["setup_commands"]), "workers must install the GPU extra"


def test_schema_check_is_not_vacuous():
    config = yaml.safe_load((ROOT / "cluster.yaml").read_text())
    config["available_node_types"]["head.cpu"]["not_a_field"] = 1
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(config, ray_schema())
