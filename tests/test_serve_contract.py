"""The HTTP API against its own /openapi.json (issue 16), driven by schemathesis: every answer is documented (status,
content type, body schema), nothing is a 5xx, and what the schema calls invalid is refused. Bounded (a few dozen
cases per route) and marked slow: `pytest -m slow tests/test_serve_contract.py`."""

import itertools

import pytest

schemathesis = pytest.importorskip("schemathesis", reason="schemathesis is not installed (pip install -e '.[dev]')")
from hypothesis import HealthCheck, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis.config import SchemathesisConfig  # noqa: E402

from vestis.engine import Engine  # noqa: E402
from vestis.serve.app import create_app  # noqa: E402

# A schema-valid request may still be refused for what JSON Schema cannot say: a text request that maps onto no
# value (400), a manipulation with a mode that takes none (400), bytes that are not an image (422). Those answers are
# documented, and the status-code and body-schema checks hold them to it.
# PATCH /items/attributes runs with writes on, on a copy of the index: a schema-valid update of an id the index does not
# hold is a 404 (the drawn ids are random strings).
CONFIG = {"checks": {"positive_data_acceptance": {"expected-statuses": ["2XX", 400, 404, 422]}}}


@pytest.fixture(scope="module")
def api(tiny_pipeline, tmp_path_factory):
    import shutil

    root, cat, run, idx, cache = tiny_pipeline
    copy = tmp_path_factory.mktemp("contract") / "idx"
    shutil.copytree(idx, copy)
    app = create_app(Engine.load(run, copy, cache_dir=cache), allow_writes=True)
    return schemathesis.openapi.from_asgi("/openapi.json", app, config=SchemathesisConfig.from_dict(CONFIG))


@pytest.mark.slow
def test_the_api_keeps_its_openapi_contract(api):
    # each route's valid and invalid cases drawn by hypothesis here (schemathesis' pytest plugin does not run on this pytest)
    from hypothesis import given

    failures = {}
    for result, mode in itertools.product(api.get_all_operations(), schemathesis.GenerationMode):
        op = result.ok()

        @given(case=op.as_strategy(generation_mode=mode))
        @settings(max_examples=30, deadline=None, database=None, derandomize=True,
                  suppress_health_check=list(HealthCheck))
        def check(case):
            case.call_and_validate()

        try:
            check()
        except Unsatisfiable:  # no invalid request to make (no parameters, or only free-text path segments)
            assert mode is schemathesis.GenerationMode.NEGATIVE, op.label
        except (AssertionError, Exception, BaseExceptionGroup) as e:
            failures[f"{op.label} ({mode.value} cases)"] = str(e)[:2000]
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
