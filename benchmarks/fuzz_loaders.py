"""A long run of the loader fuzz tests: the strategies of tests/test_fuzz_loaders.py, many more examples.

    .venv/bin/python benchmarks/fuzz_loaders.py [--examples 2000] [--only mlproject,conda,...] [--seed N]

Every loader (MLproject with -P/-e, python_env.yaml with -r files, conda.yaml,
--backend-config with the kubernetes backend's Job template) gets generated
inputs; the script prints, per loader, how many inputs ran and the first
failure (a traceback or an oversized message), with the input that caused it
(Hypothesis shrinks it), and exits 1 if any loader failed.  Not a test: it runs
for minutes.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

from hypothesis import HealthCheck, given, seed, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import loader_strategies as ls  # noqa: E402


def loaders():
    yield "mlproject", given(
        content=ls.file_contents(ls.MLPROJECT_KEYS, ls.MLPROJECT),
        entry_point=st.one_of(st.sampled_from(["main", "other", "x.py", "missing"]), ls.option_texts),
        params=st.dictionaries(st.one_of(st.sampled_from(["alpha", "data", "n", "u"]), ls.option_texts),
                               ls.option_texts, max_size=3),
    )(lambda content, entry_point, params: ls.in_fresh_root(ls.check_mlproject, content, entry_point, params))
    yield "python_env", given(
        content=ls.file_contents(ls.PYTHON_ENV_KEYS, ls.PYTHON_ENV),
        requirements=ls.file_contents(["-r", "-c"]),
    )(lambda content, requirements: ls.in_fresh_root(ls.check_python_env, content, requirements))
    yield "conda", given(content=ls.file_contents(ls.CONDA_KEYS, ls.CONDA))(
        lambda content: ls.in_fresh_root(ls.check_conda, content))
    yield "backend_config", given(
        content=ls.file_contents(ls.KUBE_KEYS, ls.KUBE_CONFIG),
        inline=st.one_of(st.none(), ls.option_texts),
        template=ls.file_contents(ls.TEMPLATE_KEYS, ls.TEMPLATE),
    )(lambda content, inline, template: ls.in_fresh_root(ls.check_backend_config, content, inline, template))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000, help="inputs per loader (default 2000)")
    parser.add_argument("--only", default="", help="comma-separated loader names")
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args()
    only = {n for n in args.only.split(",") if n}
    failed = 0
    for name, test in loaders():
        if only and name not in only:
            continue
        runner = settings(max_examples=args.examples, deadline=None, database=None,
                          suppress_health_check=list(HealthCheck))(test)
        if args.seed is not None:
            runner = seed(args.seed)(runner)
        started = time.monotonic()
        try:
            runner()
        except Exception:
            failed += 1
            print(f"{name}: FAILED after {time.monotonic() - started:.0f} s")
            traceback.print_exc()
        else:
            print(f"{name}: {args.examples} inputs, no traceback, no oversized message "
                  f"({time.monotonic() - started:.0f} s)")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
