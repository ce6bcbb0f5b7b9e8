"""A property-based fuzz of interpres serve's OpenAPI spec (schemathesis): no request, valid by
the spec or not, gets a server error; every refusal is an error in OpenAI's shape."""

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from audio_align.serve import ServeConfig, create_app  # noqa: E402
from serving import specs  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_the_fuzz_finds_no_server_error(models_dir, mode):
    app = create_app(ServeConfig(models=specs(models_dir), runtime="torch", beam=1))
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    statuses = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if mode == "negative" and operation.method.upper() != "POST":
            continue  # nothing to get wrong in a GET without parameters

        @given(operation.as_strategy(generation_mode=schemathesis.GenerationMode(mode)))
        @settings(max_examples=25, deadline=None, database=None, suppress_health_check=list(HealthCheck))
        def fuzz(case):
            response = case.call()
            statuses.setdefault(operation.label, set()).add(response.status_code)
            not_built = {501} if operation.path == "/v1/chat/completions" else set()  # the LALM: said, not hidden
            assert response.status_code < 500 or response.status_code in not_built, (
                operation.label, response.status_code, response.text[:300])
            if response.status_code >= 400:
                error = response.json()["error"]
                assert error["message"] and error["type"]

        fuzz()
    if mode == "positive":  # the spec's choices lead the fuzzer past the model check, into the audio
        assert 400 in statuses["POST /v1/audio/transcriptions"] and 404 not in statuses["POST /v1/audio/translations"]
