"""Property-based fuzzing of every endpoint from the app's own OpenAPI spec (schemathesis): no request,
valid or not, gets a 5xx, and responses match their documented schemas, status codes and content types."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from serve_helpers import make_config

from gensys.serve.app import create_app


@pytest.fixture(scope="session")
def fuzz_app(tiny_models, registry, tmp_path_factory):
    # small caps keep each generated request cheap; the fuzzing is about the HTTP layer, not the models
    return create_app(
        make_config(
            tiny_models,
            tmp_path_factory.mktemp("fuzz"),
            "limits.max_tokens=4",
            "limits.default_max_tokens=4",
            "limits.max_n=2",
            "limits.max_texts=3",
            "limits.max_beam=2",
            "limits.max_images=2",
            "limits.max_prompt_chars=200",
        ),  # fmt: skip
        registry,
    )


CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def test_no_server_errors(fuzz_app):
    """Valid (positive) and invalid (negative) requests for every operation of the spec."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    statuses: list[int] = []
    assert {op.label for op in operations} >= {"POST /v1/chat/completions", "POST /v1/caption", "GET /readyz"}
    for op in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @given(case=op.as_strategy(generation_mode=mode))
            @settings(
                max_examples=10, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True
            )
            def fuzz(case) -> None:
                statuses.append(case.call_and_validate(checks=CHECKS).status_code)

            try:
                fuzz()
            except Unsatisfiable:
                # an operation without inputs (GET /healthz) has no invalid request to generate
                assert mode == GenerationMode.NEGATIVE and op.method.upper() == "GET", op.label
    # both kinds of requests were made: accepted ones and refused ones
    assert len(statuses) > 100 and 200 in statuses and {400, 422} & set(statuses)
