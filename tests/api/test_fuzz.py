"""Property-based fuzzing from the server's own OpenAPI document (schemathesis), over real
HTTP: valid and invalid parameters of every endpoint, never a 5xx, and every answer with a
documented status, content type and shape.

The examples per endpoint are bounded and derandomized, so the run takes seconds and is the
same every time; raise ``MAX_EXAMPLES`` locally to search harder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from meterlake.api.app import create_app, openapi_document
from meterlake.config.settings import Settings
from tests.api.lakes import FULL
from tests.api.server import ApiServer

MAX_EXAMPLES = 25


def local_document() -> dict[str, Any]:
    """The OpenAPI document as the server makes it (it does not depend on the lake's data)."""
    return openapi_document(create_app(Path("/nonexistent-lake"), Settings()))


# loaded at import (collection) time; schemathesis' lazy fixture loader does not work with the
# pytest this project pins, and the document does not depend on the lake
schema = schemathesis.openapi.from_dict(local_document())


def test_the_server_serves_the_fuzzed_document(server: ApiServer) -> None:
    with server.client(FULL) as client:
        assert client.get("/openapi.json").json() == local_document()


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    suppress_health_check=list(HealthCheck),
)
def test_fuzzing_finds_no_server_error(case: Any, server: ApiServer) -> None:
    case.call_and_validate(
        base_url=server.url,
        headers={"Authorization": f"Bearer {FULL}"},
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_schema_conformance,
        ],
    )
