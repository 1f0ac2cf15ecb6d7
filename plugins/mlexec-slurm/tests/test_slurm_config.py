"""The backend config's keys and types, through mlexec_core.configmodel: the same rules as the
kubernetes backend's (test_kubernetes_manifests.py has the same cases).  No cluster needed."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlexec_core.errors import UsageError

from mlexec_slurm.config import KNOWN_KEYS, parse_config


@pytest.mark.parametrize("config, message", [
    ({"ntasks": "4"}, "--backend-config key 'ntasks' must be a whole number, got '4'"),
    ({"partition": True}, "--backend-config key 'partition' must be a string or a number, got True"),
    ({"env": {"A": [1]}}, "--backend-config key 'env': A must be a string or a number, got [1]"),
    ({"partiton": "debug"}, "unknown --backend-config key 'partiton' for the slurm backend"),
])
def test_config_rules_are_the_same_as_kubernetes(config, message, tmp_path):
    with pytest.raises(UsageError) as info:
        parse_config(config, tmp_path)
    assert info.value.message == message


def test_config_values_taken_as_kubernetes_takes_them(tmp_path):
    config = parse_config({"env": {"DEBUG": True, "SEED": 4}, "ntasks": None, "account": 1234}, tmp_path)
    assert config.env == {"DEBUG": "true", "SEED": "4"} and config.ntasks is None and config.account == "1234"


def test_every_documented_key_is_known():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    for key in KNOWN_KEYS:
        assert f"`{key}`" in readme, key
