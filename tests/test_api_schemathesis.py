"""schemathesis against /v1/openapi.json: generated requests, valid and invalid, at the real server.

Each operation of the document gets its own test (within the per-test timeout) that runs
schemathesis in-process with Hypothesis against the API on a real port, with real API keys and
the emulator behind it, and checks every response: no server error, a documented status, the
documented content type and body schema. Each test counts the cases it sent and asserts its
minimum; the minimums cover every operation and add up to at least 1,000.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_schema_conformance,
    status_code_conformance,
)

from api.openapi import document
from tests.api_harness import ApiServer

# Minimum cases per operation. Operations without parameters have few distinct requests to make.
MIN_CASES = {
    "GET /v1/email-provider": 1,
    "PUT /v1/email-provider": 250,
    "DELETE /v1/email-provider": 1,
    "GET /v1/email-provider/history": 1,
    "POST /v1/email-provider/history/{version}:restore": 40,
    "POST /v1/email-provider/test": 80,
    "GET /v1/email-provider/setup": 60,
    "GET /v1/email-provider/usage": 1,
    "GET /v1/activity": 150,
    "GET /v1/events": 40,
    "GET /v1/stats": 40,
    "GET /v1/stats/timeseries": 80,
    "GET /v1/activity/export": 60,
    "POST /v1/notifications": 250,
    "POST /v1/notifications:batch": 150,
    "GET /v1/notifications/{id}": 80,
    "GET /v1/webhooks": 1,
    "POST /v1/webhooks": 100,
    "GET /v1/webhooks/{id}": 40,
    "PATCH /v1/webhooks/{id}": 80,
    "DELETE /v1/webhooks/{id}": 30,
    "POST /v1/webhooks/{id}/secret:rotate": 30,
    "GET /v1/webhooks/{id}/deliveries": 60,
    "GET /v1/webhooks/{id}/deliveries/{delivery_id}": 40,
    "POST /v1/webhooks/{id}/deliveries/{delivery_id}:replay": 40,
    "GET /v1/keys": 1,
    "POST /v1/keys": 80,
    "PATCH /v1/keys/{id}": 60,
    "DELETE /v1/keys/{id}": 30,
    "POST /v1/notifications/{id}:retry": 40,
    "POST /v1/notifications:retry": 80,
}
MAX_EXAMPLES = {label: max(2 * n, 20) for label, n in MIN_CASES.items()}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance,
          negative_data_rejection]


def _labels() -> list[str]:
    return [f"{method.upper()} {path}" for path, item in document()["paths"].items() for method in item]


def test_case_minimums_cover_every_operation_and_add_up_to_1000() -> None:
    assert sorted(MIN_CASES) == sorted(_labels())
    assert sum(MIN_CASES.values()) >= 1000


@pytest.mark.parametrize("label", sorted(MIN_CASES))
def test_schemathesis_finds_no_server_error_and_no_undocumented_answer(label: str, api: ApiServer) -> None:
    schema = schemathesis.openapi.from_dict(api.anonymous().get("/v1/openapi.json").json())
    method, path = label.split(" ", 1)
    operation = schema[path][method]
    session = requests.Session()
    session.trust_env = False
    auth = {"Authorization": f"Bearer {api.key('acme', 'admin')}"}
    sent: list[int] = []

    @settings(max_examples=MAX_EXAMPLES[label], deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=st.one_of(operation.as_strategy(GenerationMode.POSITIVE, headers=auth),
                          operation.as_strategy(GenerationMode.NEGATIVE, headers=auth)))
    def run(case: Any) -> None:
        response = case.call(base_url=api.base_url, session=session, timeout=60)
        case.validate_response(response, checks=CHECKS)
        sent.append(response.status_code)

    try:
        run()
    finally:
        session.close()
    print(f"schemathesis {label}: {len(sent)} cases, statuses {dict(sorted(Counter(sent).items()))}")
    assert len(sent) >= MIN_CASES[label], f"{label}: only {len(sent)} cases generated"
