"""interpres serve (audio_align.serve): the official openai client against a server on localhost,
and the API's limits (413, 429, 504) and errors in OpenAI's shape."""

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
import soundfile as sf
from fastapi.testclient import TestClient

import audio_align.serve as serve_mod
from audio_align.serve import ServeConfig, create_app, load_models
from interpres.cli import main
from serving import KEY, SR, LocalServer, expected, specs, write_wav

def test_the_openai_client_transcribes_and_translates_as_the_cli_does(server, client, wav):
    _, app = server
    with open(wav, "rb") as f:
        got = client.audio.transcriptions.create(model="asr", file=f)
    assert got.text == expected(app, "asr", wav, "en").text
    for lang in ("de", "fr"):
        with open(wav, "rb") as f:
            got = client.audio.translations.create(model="st", file=f, extra_body={"target_language": lang})
        assert got.text == expected(app, "st", wav, lang).text
    assert [m.id for m in client.models.list()] == ["st", "asr"]


def test_response_formats(server, client, wav):
    _, app = server
    want = expected(app, "asr", wav, "en")
    assert len(want.segments) == 2  # the two bursts
    with open(wav, "rb") as f:
        verbose = client.audio.transcriptions.create(model="asr", file=f, response_format="verbose_json")
    assert verbose.language == "english" and verbose.duration == pytest.approx(3.0)
    assert [(s.start, s.end, s.text) for s in verbose.segments] == [(s.start, s.end, s.text) for s in want.segments]
    assert all(s.avg_logprob < 0 and s.tokens for s in verbose.segments)
    with open(wav, "rb") as f:
        text = client.audio.transcriptions.create(model="asr", file=f, response_format="text")
    assert text.strip() == want.text
    with open(wav, "rb") as f:
        srt = client.audio.transcriptions.create(model="asr", file=f, response_format="srt")
    first = want.segments[0]
    assert srt.startswith("1\n00:00:0") and "\n\n2\n" in srt and f"{first.text}\n" in srt
    with open(wav, "rb") as f:
        vtt = client.audio.translations.create(model="st", file=f, response_format="vtt",
                                               extra_body={"target_language": "de"})
    assert vtt.startswith("WEBVTT\n\n00:00:00.") and " --> " in vtt


def test_errors_have_openais_shape_and_status(server, client, wav, tmp_path):
    url, _ = server
    with pytest.raises(openai.AuthenticationError) as e:
        openai.OpenAI(base_url=url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert e.value.status_code == 401 and e.value.body["code"] == "invalid_api_key"
    with open(wav, "rb") as f, pytest.raises(openai.NotFoundError) as e:
        client.audio.transcriptions.create(model="whisper-1", file=f)
    assert "not served here (served: st, asr)" in e.value.message and e.value.body["param"] == "model"
    bad = tmp_path / "notes.wav"
    bad.write_bytes(b"not audio at all")
    with open(bad, "rb") as f, pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model="asr", file=f)
    assert "notes.wav: not a readable audio file" in e.value.message and str(tmp_path) not in e.value.message
    for extra, param in (({"target_language": "ja"}, "target_language"), ({}, "target_language"),
                         ({"response_format": "xml", "target_language": "de"}, "response_format"),
                         ({"temperature": 0.7, "target_language": "de"}, "temperature")):
        with open(wav, "rb") as f, pytest.raises(openai.BadRequestError) as e:
            client.audio.translations.create(model="st", file=f, extra_body=extra)
        assert e.value.body["param"] == param, extra
    with open(wav, "rb") as f, pytest.raises(openai.BadRequestError) as e:
        client.audio.transcriptions.create(model="asr", file=f, language="fr")
    assert "English only" in e.value.message
    r = httpx.post(url + "/v1/audio/transcriptions", json={"model": "asr"}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "bad_content_type"


def test_chat_completions_says_what_is_missing(client, wav):
    import base64

    audio = base64.b64encode(wav.read_bytes()).decode()
    with pytest.raises(openai.APIStatusError) as e:
        client.chat.completions.create(model="st", messages=[{"role": "user", "content": [
            {"type": "text", "text": "What do you hear?"},
            {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}}]}])
    assert e.value.status_code == 501 and e.value.body["code"] == "lalm_missing"


def test_concurrent_requests_are_batched_and_answered_as_alone(server, client, tmp_path):
    """Twelve files at once, into three languages of one model and transcribed by the other:
    each answer is the one it gets alone, in fewer batches than requests."""
    _, app = server
    wavs = [write_wav(tmp_path / f"w{i}.wav", seconds=2.0 + 0.25 * i, bursts=((0.2, 1.0 + 0.1 * i),), seed=i)
            for i in range(12)]
    kinds = [("st", "de"), ("asr", "en"), ("st", "fr")]
    asks = [(w, *kinds[i % 3]) for i, w in enumerate(wavs)]
    before = app.state.batcher.stats.batches

    def ask(job):
        path, model, lang = job
        with open(path, "rb") as f:
            if lang == "en":
                return client.audio.transcriptions.create(model=model, file=f).text
            return client.audio.translations.create(model=model, file=f, extra_body={"target_language": lang}).text

    with ThreadPoolExecutor(12) as pool:
        got = list(pool.map(ask, asks))
    assert got == [expected(app, model, w, lang).text for w, model, lang in asks]
    assert app.state.batcher.stats.batches - before < len(asks)


def test_health_metrics_and_the_spec(server, client, wav):
    url, _ = server
    with open(wav, "rb") as f:
        client.audio.transcriptions.create(model="asr", file=f)
    assert httpx.get(url + "/healthz").json()["status"] == "ok"
    metrics = httpx.get(url + "/metrics").text
    assert 'interpres_requests_total{endpoint="/v1/audio/transcriptions",status="200"}' in metrics
    assert "interpres_request_seconds_bucket" in metrics and "interpres_queue_depth" in metrics
    spec = httpx.get(url + "/openapi.json").json()
    for path in ("/v1/audio/transcriptions", "/v1/audio/translations", "/v1/chat/completions", "/v1/models"):
        assert path in spec["paths"]
    page = httpx.get(url + "/").text
    assert "<title>interpres</title>" in page and "/v1/audio/translations" in page


def blocked_app(models_dir, monkeypatch, **cfg):
    """An app whose model waits for ``go`` before each batch: requests pile up behind it."""
    go, started = threading.Event(), threading.Event()
    real = serve_mod._run_jobs

    def slow(models, batch_frames, jobs):
        started.set()
        assert go.wait(20)
        return real(models, batch_frames, jobs)

    monkeypatch.setattr(serve_mod, "_run_jobs", slow)
    app = create_app(ServeConfig(models=specs(models_dir), runtime="torch", beam=1, **cfg))
    return app, go, started


def test_a_full_queue_answers_429_and_loses_nothing(models_dir, wav, monkeypatch):
    app, go, started = blocked_app(models_dir, monkeypatch, max_queue=2, batching=False)
    files = {"file": ("talk.wav", wav.read_bytes(), "audio/wav")}
    with TestClient(app) as c, ThreadPoolExecutor(6) as pool:
        first = pool.submit(c.post, "/v1/audio/transcriptions", files=files, data={"model": "asr"})
        assert started.wait(10)  # the model holds the first; two may wait; the rest are refused
        rest = [pool.submit(c.post, "/v1/audio/transcriptions", files=files, data={"model": "asr"}) for _ in range(5)]
        deadline = time.time() + 20  # wait until the queue is full and the others have been answered
        while (app.state.batcher.depth < 3 or sum(f.done() for f in rest) < 3) and time.time() < deadline:
            time.sleep(0.02)
        assert [f.result().status_code for f in rest if f.done()] == [429, 429, 429]
        go.set()
        codes = sorted([first.result().status_code] + [f.result().status_code for f in rest])
    assert codes == [200, 200, 200, 429, 429, 429]
    body = [f.result() for f in rest if f.result().status_code == 429][0].json()
    assert body["error"]["type"] == "rate_limit_error"


def test_no_answer_in_time_is_504(models_dir, wav, monkeypatch):
    app, go, _ = blocked_app(models_dir, monkeypatch, timeout_s=0.3)
    with TestClient(app) as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("talk.wav", wav.read_bytes(), "audio/wav")},
                   data={"model": "asr"})
        go.set()
    assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"


def test_a_failing_model_answers_500_in_shape_and_the_server_goes_on(models_dir, wav, monkeypatch):
    app = create_app(ServeConfig(models=specs(models_dir), runtime="torch", beam=1))
    translator = app.state.models["asr"].translator
    real = translator.decode_each
    monkeypatch.setattr(translator, "decode_each", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    files = {"file": ("talk.wav", wav.read_bytes(), "audio/wav")}
    with TestClient(app, raise_server_exceptions=False) as c:
        r = c.post("/v1/audio/transcriptions", files=files, data={"model": "asr"})
        assert r.status_code == 500 and r.json()["error"]["type"] == "server_error"
        assert "RuntimeError" in r.json()["error"]["message"]
        monkeypatch.setattr(translator, "decode_each", real)
        assert c.post("/v1/audio/transcriptions", files=files, data={"model": "asr"}).status_code == 200


def test_too_large_or_too_long_is_413(models_dir, tmp_path):
    app = create_app(ServeConfig(models=specs(models_dir), runtime="torch", max_upload_mb=0.09, max_audio_s=2.0))
    long = write_wav(tmp_path / "long.wav", seconds=2.5, bursts=((0.2, 2.0),))
    big = tmp_path / "big.wav"
    sf.write(big, np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 5).astype(np.float32), SR)
    with TestClient(app) as c:
        r = c.post("/v1/audio/transcriptions", files={"file": ("big.wav", big.read_bytes(), "audio/wav")},
                   data={"model": "asr"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "too_large"
        r = c.post("/v1/audio/transcriptions", files={"file": ("long.wav", long.read_bytes(), "audio/wav")},
                   data={"model": "asr"})
        assert r.status_code == 413 and "long.wav: 2 s of audio; at most 2 s" in r.json()["error"]["message"]


def test_serve_command_errors_name_the_file_or_id(models_dir, tmp_path, capsys):
    assert main(["serve", "--api-key-file", str(tmp_path / "keys.txt")]) == 2
    assert f"{tmp_path / 'keys.txt'}: cannot read the API keys" in capsys.readouterr().err
    with pytest.raises(serve_mod.ServeError, match="the id 'st' is served already"):
        load_models([f"st={models_dir / 'st'}", f"st={models_dir / 'asr'}"], "torch")
    assert main(["serve", "--model", str(tmp_path / "nope")]) == 2
    assert "nope" in capsys.readouterr().err


def test_chat_completions_answer_with_the_lalm(models_dir, wav, tmp_path):
    """A served LALM answers OpenAI's chat shape with input_audio parts as `interpres ask`
    answers; bad requests get OpenAI-shaped errors that name the field."""
    import base64

    from audio_align.evaluate import LoadedLalm
    from builders import make_lalm_dir
    from speech.audio import load_audio

    lalm_dir = make_lalm_dir(tmp_path / "lalm", models_dir / "asr")
    app = create_app(ServeConfig(models=specs(models_dir), runtime="torch", beam=1, lalm=str(lalm_dir)))
    audio = base64.b64encode(wav.read_bytes()).decode()
    want, n_prompt, n_answer, _ = LoadedLalm(lalm_dir).ask(load_audio(wav), "What do you hear?", 8)
    with LocalServer(app) as srv:
        client = openai.OpenAI(base_url=srv.url + "/v1", api_key="none", max_retries=0)
        assert "lalm" in [m.id for m in client.models.list().data]
        r = client.chat.completions.create(model="lalm", max_tokens=8, messages=[{"role": "user", "content": [
            {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
            {"type": "text", "text": "What do you hear?"}]}])
        assert r.choices[0].message.content == want and r.choices[0].message.role == "assistant"
        assert r.usage.prompt_tokens == n_prompt and r.usage.completion_tokens == n_answer
        options = ["no", "A bell, then speech.", "yes"]  # vLLM's guided_choice: the answer is one of them
        picked = LoadedLalm(lalm_dir).ask(load_audio(wav), "What do you hear?", 8, choices=options)[0]
        r = client.chat.completions.create(model="lalm", max_tokens=8, extra_body={"guided_choice": options},
                                           messages=[{"role": "user", "content": [
                                               {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                                               {"type": "text", "text": "What do you hear?"}]}])
        assert r.choices[0].message.content == picked and picked in options
        bad = [({"model": "st"}, 404, "model_not_found"),
               ({"messages": [{"role": "user", "content": "What do you hear?"}]}, 400, None),
               ({"messages": [{"role": "user", "content": [
                   {"type": "input_audio", "input_audio": {"data": "###", "format": "wav"}},
                   {"type": "text", "text": "Hi?"}]}]}, 400, "bad_audio"),
               ({"temperature": 0.7}, 400, None),
               ({"guided_choice": []}, 400, None), ({"guided_choice": "yes"}, 400, None),
               ({"guided_choice": ["yes", " "]}, 400, None),
               ({"messages": [{"role": "user", "content": [
                   {"type": "input_audio", "input_audio": {"data": base64.b64encode(b"RIFF0000").decode(),
                                                           "format": "wav"}},
                   {"type": "text", "text": "Hi?"}]}]}, 400, "bad_audio")]
        for change, status, code in bad:
            body = {"model": "lalm", "messages": [{"role": "user", "content": [
                {"type": "input_audio", "input_audio": {"data": audio, "format": "wav"}},
                {"type": "text", "text": "What do you hear?"}]}], **change}
            res = httpx.post(srv.url + "/v1/chat/completions", json=body)
            assert res.status_code == status, (change, res.text)
            assert set(res.json()["error"]) == {"message", "type", "param", "code"}
            if code:
                assert res.json()["error"]["code"] == code
