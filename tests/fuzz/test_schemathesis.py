"""schemathesis against the served OpenAPI spec of a real server on loopback.

Generates positive and negative cases for every operation (≥ 1,000 in total) and checks
that none is a 5xx and that every response matches the documented schema. The tiers are
the deterministic `keyword_sentiment` callable: the subject here is the HTTP contract.
"""

from __future__ import annotations

import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings

schemathesis = pytest.importorskip("schemathesis")

from tiergate.api import create_app  # noqa: E402
from tiergate.config import load_config  # noqa: E402
from tiergate.service import Service  # noqa: E402
from tiergate.testing import serve_in_thread  # noqa: E402

CONFIG = """
service: fuzz
tiers:
  - name: fast
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    threshold: 0.9
    cost_per_call: 0.000001
  - name: accurate
    model: {kind: callable, target: "tiergate.testing:keyword_sentiment", labels: [negative, positive]}
    cost_per_call: 0.0001
limits: {max_batch_items: 64}
"""
EXAMPLES_PER_OPERATION = 400


@pytest.fixture(scope="module")
def base_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path: Path = tmp_path_factory.mktemp("fuzz") / "config.yaml"
    path.write_text(CONFIG)
    service = Service.from_config(load_config(path))
    with serve_in_thread(create_app(service)) as url:
        yield url


def test_no_server_errors_and_responses_match_schema(base_url: str) -> None:
    schema = schemathesis.openapi.from_url(base_url + "/openapi.json")
    statuses: Counter[int] = Counter()
    total = 0
    operations = [r.ok() for r in schema.get_all_operations()]
    modes = [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE]
    for operation, mode in itertools.product(operations, modes):
        if mode is schemathesis.GenerationMode.NEGATIVE and (
            operation.method.upper() != "POST" or not list(operation.body)
        ):
            continue  # nothing to get wrong in a request without parameters or body

        positive = mode is schemathesis.GenerationMode.POSITIVE

        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        @given(case=operation.as_strategy(generation_mode=mode))
        def run(case):  # type: ignore[no-untyped-def]
            nonlocal total
            response = case.call(base_url=base_url, timeout=10)
            statuses[response.status_code] += 1
            total += 1
            assert response.status_code < 500, (case.as_curl_command(), response.text)
            if positive:  # noqa: B023 - run() is called right below, in this iteration
                case.validate_response(response)
            else:  # invalid requests must get a documented error shape, not just any 4xx
                assert response.status_code < 300 or "error" in response.json()

        run()
    print(f"schemathesis: {total} cases, statuses {dict(statuses)}")
    assert total >= 1000, total
    assert all(s < 500 for s in statuses)
    assert statuses[200] > 100 and statuses[422] > 100, statuses  # both kinds exercised
