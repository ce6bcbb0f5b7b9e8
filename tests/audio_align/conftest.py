"""A server on localhost over two tiny models (st: de fr en; asr: en), API key required."""

import openai
import pytest

from audio_align.serve import ServeConfig, create_app
from builders import make_model_dir
from serving import KEY, LocalServer, specs, write_wav


@pytest.fixture(scope="module")
def models_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    make_model_dir(root / "st", langs=("de", "fr", "en"))
    make_model_dir(root / "asr", langs=("en",), task="asr", seed=1)
    return root


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    return write_wav(tmp_path_factory.mktemp("audio") / "talk.wav")


@pytest.fixture(scope="module")
def server(models_dir):
    """(url, app) of a real uvicorn server."""
    app = create_app(ServeConfig(models=specs(models_dir), runtime="torch", api_keys=[KEY], beam=2))
    with LocalServer(app) as srv:
        yield srv.url, app


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key=KEY, max_retries=0)
