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


@pytest.mark.parametrize("value", [-1, 65536, "60", 1.5, True])
def test_grace_is_a_whole_number_of_seconds(value, tmp_path):
    with pytest.raises(UsageError) as info:
        parse_config({"grace": value}, tmp_path)
    assert info.value.message.startswith("--backend-config key 'grace' must be a whole number of seconds from 0 to 65535")


def test_grace_becomes_the_warning_signal_and_zero_none(tmp_path):
    assert "--signal=B:USR1@60" in parse_config({}, tmp_path).sbatch_options("job")
    assert "--signal=B:USR1@300" in parse_config({"grace": 300}, tmp_path).sbatch_options("job")
    assert not any(o.startswith("--signal") for o in parse_config({"grace": 0}, tmp_path).sbatch_options("job"))


@pytest.mark.parametrize("option", ["--signal=USR1@60", "--requeue", "--no-requeue", "--open-mode=truncate"])
def test_options_mlexec_sets_for_restarts_are_refused_in_sbatch_args(option, tmp_path):
    with pytest.raises(UsageError) as info:
        parse_config({"sbatch-args": [option]}, tmp_path)
    assert f"{option.split('=')[0]} is not allowed" in info.value.message
