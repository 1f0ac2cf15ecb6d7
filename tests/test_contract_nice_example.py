"""The example backend of docs/plugins.md (`NiceBackend`), installed as a plugin
would be, passes the conformance kit: what the docs teach is what the kit checks."""

from __future__ import annotations

import re

import pytest

from mlexec_core.testing import ROOT
from mlexec_core.testing.conformance import Contract


@pytest.fixture
def nice_site(tmp_path):
    text = (ROOT / "docs" / "plugins.md").read_text()
    (block,) = re.findall(r"```python\n(# example-backend: nice\n.*?)```", text, re.S)
    site = tmp_path / "nice-site"
    dist = site / "mlexec_nice-0.1.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mlexec-nice\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[mlexec]\nnice = mlexec_nice_example\n")
    (site / "mlexec_nice_example.py").write_text(block)
    return site


class TestNiceExampleContract(Contract):
    backend = "nice"
    env_manager = "local"
    backend_config = {"niceness": 10}
    bad_backend_config = ({"nicenes": 3}, "'nicenes'")

    @pytest.fixture
    def contract_env(self, nice_site, cli_env):
        return {"PYTHONPATH": f"{nice_site}:{cli_env['PYTHONPATH']}"}
