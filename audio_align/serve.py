"""``interpres serve``: the project's speech models behind an OpenAI-compatible HTTP API.

FastAPI + uvicorn, in the shapes OpenAI's API and its official ``openai`` client use (as vLLM
serves Whisper):

- ``POST /v1/audio/transcriptions`` (multipart): ``file``, ``model``, ``language`` (the
  speech's language: our models hear English, so "en" or nothing), ``prompt`` (accepted,
  not used: no served model takes a text prompt), ``response_format`` (json, text, srt, vtt,
  verbose_json with segments), ``temperature`` (0 only: decoding is beam search).
- ``POST /v1/audio/translations``: OpenAI's translates into English; ours takes English
  speech and the extra form field ``target_language`` (de es fr it nl pt ro ru ja zh, any
  language the model has; with the ``openai`` client: ``extra_body={"target_language": "fr"}``).
- ``POST /v1/chat/completions`` (JSON, OpenAI's chat shape): the audio-language model
  (``ServeConfig.lalm``, ``interpres serve --lalm default``) answers the text of the last user
  message about the last ``input_audio`` part (``{"data": BASE64, "format": "wav"}``) of the
  conversation; greedy (``temperature`` 0), ``max_tokens`` or ``max_completion_tokens`` bound
  the answer. Without a LALM served: 501.
- ``GET /v1/models``, ``GET /healthz``, ``GET /metrics`` (Prometheus text: requests by
  endpoint and status, latency histograms, queue depth, batch sizes), ``GET /openapi.json``,
  and ``GET /``: a web page to upload or record audio and see the answer.

Errors have OpenAI's shape, ``{"error": {"message", "type", "param", "code"}}``: a bad field,
content type or undecodable audio 400, a missing or wrong API key 401 (``--api-key``:
``Authorization: Bearer KEY``), an unknown model 404, an upload over ``max_upload_mb`` or
audio over ``max_audio_s`` 413, a full queue 429, no answer within ``timeout_s`` 504. A
request names models by their served ids (``GET /v1/models``), never by a server path.

Requests that arrive together are decoded as one batch (:mod:`audio_align.batching`): one
worker thread owns the models; uploads are decoded and cut into segments in the request
threads. The int8 ONNX Runtime export of each model is the default runtime.

    app = create_app(ServeConfig(models=["teacher"]))  # Whisper base fine-tuned: transcribes and translates
    uvicorn.run(app, host="127.0.0.1", port=8000)
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import threading
import uuid
import logging
import math
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, File, Form, Request, UploadFile
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from audio_align.batching import DynamicBatcher, Overloaded
from compress.errors import UserError
from speech.audio import SAMPLE_RATE, AudioError, decode_audio
from speech.decode import DecodingOptions, DecodingResult
from speech.model_card import LANG_NAMES
from speech.translate import (Segment, Translator, cut_segments, decode_segments, load_translator,
                              resolve_ctc_weight, to_srt, to_vtt)

log = logging.getLogger(__name__)

RESPONSE_FORMATS = ("json", "text", "srt", "vtt", "verbose_json")
BUNDLED_NAMES = ("teacher", "default", "asr", "whisper-base")  # served under these ids
PAGE = Path(__file__).resolve().parent / "static" / "index.html"


@dataclass
class ServeConfig:
    """What ``interpres serve`` serves and its limits."""

    models: list[str] = field(default_factory=lambda: ["teacher"])  # NAME, DIR or ID=DIR
    runtime: str = "onnx-int8"  # speech.runtime.DECODING_RUNTIMES
    api_keys: list[str] = field(default_factory=list)  # empty: no key needed
    max_upload_mb: float = 25.0  # OpenAI's limit
    max_audio_s: float = 600.0
    max_queue: int = 64  # requests waiting for the model; more are refused with 429
    batching: bool = True
    batch_window_ms: float = 10.0
    max_batch_items: int = 4  # measured (BENCHMARKS.md): more only pads int8 decoding on 2 cores
    batch_frames: int = 20000  # padded feature frames per forward
    timeout_s: float = 60.0
    beam: int = 5
    lalm: str = ""  # the audio-language model of /v1/chat/completions: a directory or "default"; "": none


class ServeError(UserError, ValueError):
    """What to serve cannot be: a model id given twice, no model, an unreadable key file."""


class ApiError(Exception):
    """An error answered in OpenAI's shape."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def response(self) -> JSONResponse:
        return JSONResponse({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}}, status_code=self.status)


@dataclass
class ServedModel:
    id: str
    translator: Translator
    created: int
    opts: DecodingOptions  # as `interpres translate` decodes: joint CTC on English rows where the model has it


@dataclass
class Job:
    """One request for the batcher: its segments' features, decoded into one language."""

    model: str
    lang: str
    feats: list[Any]


def load_models(specs: list[str], runtime: str, beam: int = 5) -> dict[str, ServedModel]:
    """``NAME`` (default, asr, teacher, whisper-base), ``DIR`` (served as its folder's name)
    or ``ID=DIR``: the loaded translators by served id."""
    out: dict[str, ServedModel] = {}
    for spec in specs:
        name, _, path = spec.partition("=") if "=" in spec else ("", "", spec)
        translator = load_translator(path, runtime=runtime)  # names (teacher, default, asr, ...) or folders
        if not name:
            name = path if path in BUNDLED_NAMES and not Path(path).exists() else Path(path).resolve().name
        if name in out:
            raise ServeError(f"--model {spec}: the id '{name}' is served already; name it with ID=DIR")
        opts = DecodingOptions(beam_size=beam, ctc_weight=resolve_ctc_weight(translator, None))
        out[name] = ServedModel(name, translator, int(time.time()), opts)
        log.info("serving %s: %s (%s, %s)", name, translator.name, translator.task, ", ".join(translator.languages))
    return out


def _run_jobs(models: dict[str, ServedModel], batch_frames: int, jobs: list[Job]) -> list[Any]:
    """Decode the jobs of one batch: the segments of every job for one model together, each into
    its own job's language (``decode_segments(..., each=True)``), in batches of at most ``batch_frames``."""
    results: list[Any] = [None] * len(jobs)
    by_model: dict[str, list[int]] = {}
    for i, job in enumerate(jobs):
        by_model.setdefault(job.model, []).append(i)
    for model, idx in by_model.items():
        translator, opts = models[model].translator, models[model].opts
        feats = [x for i in idx for x in jobs[i].feats]
        langs = [jobs[i].lang for i in idx for _ in jobs[i].feats]
        try:
            decoded = [r[0] for r in decode_segments(translator, feats, langs, opts, batch_frames, progress=False,
                                                     each=True)]
        except Exception as e:  # noqa: BLE001 - this model's requests fail, the others go on
            log.exception("decoding %d segments with %s failed", len(feats), model)
            for i in idx:
                results[i] = e
            continue
        start = 0
        for i in idx:  # back to the jobs, in the order their segments went in
            results[i] = decoded[start:start + len(jobs[i].feats)]
            start += len(jobs[i].feats)
    return results


class _Metrics:
    def __init__(self, depth) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter("interpres_requests", "HTTP requests answered", ["endpoint", "status"],
                                registry=self.registry)
        self.latency = Histogram("interpres_request_seconds", "Time to answer a request", ["endpoint"],
                                 buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.batch_items = Histogram("interpres_batch_requests", "Requests decoded together in one batch",
                                     buckets=(1, 2, 4, 8, 16, 32, 64), registry=self.registry)
        self.queue = Gauge("interpres_queue_depth", "Requests waiting for or in the model", registry=self.registry)
        self.queue.set_function(depth)


def _lang_name(lang: str) -> str:
    return LANG_NAMES.get(lang, lang).split(" ")[0].lower()


def create_app(cfg: ServeConfig, models: dict[str, ServedModel] | None = None) -> FastAPI:
    """The API over ``cfg.models`` (or the already loaded ``models``)."""
    models = models if models is not None else load_models(cfg.models, cfg.runtime, cfg.beam)
    if not models:
        raise ServeError("no model to serve")
    batcher: DynamicBatcher[Job] = DynamicBatcher(
        lambda jobs: _observe(jobs), max_queue=cfg.max_queue, window_s=cfg.batch_window_ms / 1000,
        max_items=cfg.max_batch_items if cfg.batching else 1, name="interpres-model")
    metrics = _Metrics(lambda: batcher.depth)
    lalm, lalm_id, lalm_created, lalm_lock = None, "", int(time.time()), threading.Lock()
    if cfg.lalm:
        from audio_align.evaluate import LoadedLalm

        lalm = LoadedLalm(cfg.lalm)
        lalm_id = "lalm" if cfg.lalm == "default" else lalm.path.resolve().name
        if lalm_id in models:
            raise ServeError(f"--lalm {cfg.lalm}: the id '{lalm_id}' is served already as a speech model")
        log.info("serving %s for chat: %s", lalm_id, lalm.path)

    def _observe(jobs: list[Job]) -> list[Any]:
        metrics.batch_items.observe(len(jobs))
        return _run_jobs(models, cfg.batch_frames, jobs)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        batcher.close()

    app = FastAPI(title="interpres", version="1", lifespan=lifespan,
                  description="Speech transcription and translation, OpenAI-compatible (see audio_align/serve.py).")
    app.state.batcher, app.state.models, app.state.config = batcher, models, cfg
    max_bytes = int(cfg.max_upload_mb * 1024 * 1024)

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> JSONResponse:
        return e.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> JSONResponse:
        ctype = request.headers.get("content-type", "")
        if request.method == "POST" and request.url.path.startswith("/v1/audio/") and not (
                ctype.startswith("multipart/form-data") or ctype.startswith("application/x-www-form-urlencoded")):
            return ApiError(400, f"Content-Type must be multipart/form-data, got '{ctype or 'none'}'",
                            code="bad_content_type").response()
        err = e.errors()[0] if e.errors() else {}
        param = str(err.get("loc", ["", "?"])[-1])
        return ApiError(400, f"{param}: {err.get('msg', 'invalid')}", param=param).response()

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:  # a bug or a failing model: said, in shape
        log.error("%s %s failed: %r", request.method, request.url.path, e)
        return ApiError(500, f"the server failed on this request ({type(e).__name__})", "server_error").response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        type_ = "invalid_request_error" if e.status_code < 500 else "server_error"
        return ApiError(e.status_code, str(e.detail), type_).response()

    @app.middleware("http")
    async def _measure(request: Request, call_next):
        t0 = time.perf_counter()
        length = request.headers.get("content-length")
        if request.method == "POST" and length and length.isdigit() and int(length) > max_bytes + 65536:
            response: Response = ApiError(413, f"the request is {int(length) / 1e6:.1f} MB; at most "
                                          f"{cfg.max_upload_mb:g} MB of audio are taken", code="too_large").response()
        else:
            response = await call_next(request)
        route = request.scope.get("route")
        endpoint = getattr(route, "path", "other")
        metrics.requests.labels(endpoint, str(response.status_code)).inc()
        metrics.latency.labels(endpoint).observe(time.perf_counter() - t0)
        return response

    def authorize(request: Request) -> None:
        if not cfg.api_keys:
            return
        scheme, _, key = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not any(hmac.compare_digest(key.strip(), k) for k in cfg.api_keys):
            raise ApiError(401, "a valid API key is needed: 'Authorization: Bearer KEY'", code="invalid_api_key")

    def pick_model(model: str) -> ServedModel:
        if model not in models:
            raise ApiError(404, f"the model '{model}' is not served here (served: {', '.join(models)})",
                           param="model", code="model_not_found")
        return models[model]

    async def run(served: ServedModel, lang: str, upload: UploadFile, response_format: str,
                  temperature: float, task: str) -> Response:
        if response_format not in RESPONSE_FORMATS:
            raise ApiError(400, f"response_format must be one of {', '.join(RESPONSE_FORMATS)}, "
                           f"got '{response_format}'", param="response_format")
        if temperature != 0:
            raise ApiError(400, f"temperature {temperature:g}: only 0 is served (beam search)", param="temperature")
        name = Path(upload.filename or "file").name  # what the client called it; never a server path
        data = await upload.read(max_bytes + 1)
        if len(data) > max_bytes:
            raise ApiError(413, f"{name}: larger than {cfg.max_upload_mb:g} MB", param="file", code="too_large")

        def prepare():
            wave = decode_audio(data, name)
            duration = len(wave) / SAMPLE_RATE
            if duration > cfg.max_audio_s:
                raise ApiError(413, f"{name}: {duration:.0f} s of audio; at most {cfg.max_audio_s:g} s are taken",
                               param="file", code="too_long")
            return duration, cut_segments(served.translator, wave)

        try:
            duration, pieces = await run_in_threadpool(prepare)
        except AudioError as e:
            raise ApiError(400, str(e), param="file", code="bad_audio") from None
        results: list[DecodingResult] = []
        if pieces:
            job = Job(served.id, lang, [x for _, _, x in pieces])
            try:
                fut = batcher.submit(job)
            except Overloaded as e:
                raise ApiError(429, f"the server is busy ({e}); retry later", "rate_limit_error",
                               code="overloaded") from None
            try:
                results = await asyncio.wait_for(asyncio.wrap_future(fut), cfg.timeout_s)
            except asyncio.TimeoutError:
                fut.cancel()
                raise ApiError(504, f"no answer within {cfg.timeout_s:g} s", "timeout_error", code="timeout") from None
        segments = [Segment(s, e, served.translator.text(r)) for (s, e, _), r in zip(pieces, results)]
        text = " ".join(s.text for s in segments if s.text)
        if response_format == "text":
            return PlainTextResponse(text + "\n")
        if response_format == "srt":
            return PlainTextResponse(to_srt(segments))
        if response_format == "vtt":
            return PlainTextResponse(to_vtt(segments), media_type="text/vtt")
        usage = {"type": "duration", "seconds": math.ceil(duration)}
        if response_format == "json":
            return JSONResponse({"text": text, "usage": usage})
        return JSONResponse({
            "task": task, "language": _lang_name(lang), "duration": round(duration, 3), "text": text,
            "segments": [{"id": i, "seek": 0, "start": s.start, "end": s.end, "text": s.text, "tokens": r.tokens,
                          "temperature": 0.0, "avg_logprob": _avg_logprob(r),
                          "compression_ratio": _compression_ratio(s.text)}
                         for i, (s, r) in enumerate(zip(segments, results))],
            "usage": usage})

    @app.post("/v1/audio/transcriptions", dependencies=[Depends(authorize)])
    async def transcriptions(file: UploadFile = File(...), model: str = Form(...),
                             language: str | None = Form(None), prompt: str | None = Form(None),
                             response_format: str = Form("json"), temperature: float = Form(0.0)) -> Response:
        """English speech to English text."""
        served = pick_model(model)
        if language not in (None, "", "en"):
            raise ApiError(400, f"language '{language}': the served models hear English only", param="language")
        try:
            lang = served.translator.transcription_language()
        except ValueError as e:
            raise ApiError(400, str(e), param="model") from None
        return await run(served, lang, file, response_format, temperature, "transcribe")

    @app.post("/v1/audio/translations", dependencies=[Depends(authorize)])
    async def translations(file: UploadFile = File(...), model: str = Form(...),
                           target_language: str | None = Form(None), prompt: str | None = Form(None),
                           response_format: str = Form("json"), temperature: float = Form(0.0)) -> Response:
        """English speech translated into ``target_language`` (an extra field; OpenAI's endpoint has none)."""
        served = pick_model(model)
        langs = served.translator.languages
        if not target_language or target_language not in langs:
            raise ApiError(400, f"target_language must be one of {', '.join(langs)} for {model}, "
                           f"got '{target_language or ''}'", param="target_language")
        return await run(served, target_language, file, response_format, temperature, "translate")

    @app.post("/v1/chat/completions", dependencies=[Depends(authorize)])
    async def chat_completions(body: dict[str, Any]) -> Response:
        """Answers about audio (an ``input_audio`` part) from the audio-language model."""
        if lalm is None:
            raise ApiError(501, "no audio-language model is served: start the server with --lalm default (the "
                           "bundled one) or --lalm DIR", "not_implemented_error", code="lalm_missing")
        if body.get("model") != lalm_id:
            raise ApiError(404, f"the model '{body.get('model')}' is not served for chat (served: {lalm_id})",
                           param="model", code="model_not_found")
        audio_b64, fmt, question = _chat_request(body)
        temperature = body.get("temperature", 0)
        if not isinstance(temperature, (int, float)) or temperature != 0:
            raise ApiError(400, f"temperature {temperature!r}: only 0 is served (greedy)", param="temperature")
        limit = body.get("max_completion_tokens", body.get("max_tokens", 128))
        if not isinstance(limit, int) or not 1 <= limit <= 512:
            raise ApiError(400, f"max_tokens must be an integer in [1, 512], got {limit!r}", param="max_tokens")
        choices = body.get("guided_choice")  # vLLM's extra parameter: the answer is one of these
        if choices is not None:
            if (not isinstance(choices, list) or not 1 <= len(choices) <= 64
                    or not all(isinstance(c, str) and c.strip() and len(c) <= 1000 for c in choices)):
                raise ApiError(400, "guided_choice must be a list of 1 to 64 non-empty strings (at most 1000 "
                               "characters each)", param="guided_choice")
            if lalm.hf is not None:
                raise ApiError(400, "guided_choice is served for LALM directories, not Qwen2-Audio ones",
                               param="guided_choice")
        try:
            data = base64.b64decode(audio_b64, validate=True)
        except (binascii.Error, ValueError):
            raise ApiError(400, "input_audio.data is not base64", param="messages", code="bad_audio") from None
        if len(data) > max_bytes:
            raise ApiError(413, f"input_audio: larger than {cfg.max_upload_mb:g} MB", param="messages", code="too_large")

        def work() -> tuple[str, int, int, bool]:
            wave = decode_audio(data, f"input_audio.{fmt}")
            seconds = len(wave) / SAMPLE_RATE
            if seconds > lalm.max_seconds:
                raise ApiError(413, f"input_audio: {seconds:.1f} s of audio; the model hears at most "
                               f"{lalm.max_seconds:g} s", param="messages", code="too_long")
            with lalm_lock:  # one answer at a time: the model is not shared with the batcher
                return lalm.ask(wave, question, limit, choices)

        try:
            text, n_prompt, n_answer, stopped = await asyncio.wait_for(run_in_threadpool(work), cfg.timeout_s)
        except AudioError as e:
            raise ApiError(400, str(e), param="messages", code="bad_audio") from None
        except asyncio.TimeoutError:
            raise ApiError(504, f"no answer within {cfg.timeout_s:g} s", "timeout_error", code="timeout") from None
        return JSONResponse({
            "id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
            "model": lalm_id,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "stop" if stopped else "length"}],
            "usage": {"prompt_tokens": n_prompt, "completion_tokens": n_answer, "total_tokens": n_prompt + n_answer}})

    @app.get("/v1/models", dependencies=[Depends(authorize)])
    async def list_models() -> dict[str, Any]:
        data = [{"id": m.id, "object": "model", "created": m.created, "owned_by": "interpres",
                 "task": m.translator.task, "languages": m.translator.languages} for m in models.values()]
        if lalm is not None:
            data.append({"id": lalm_id, "object": "model", "created": lalm_created, "owned_by": "interpres",
                         "task": "audio-chat", "languages": ["en"]})
        return {"object": "list", "data": data}

    @app.get("/healthz")
    async def healthz() -> dict[str, Any]:
        return {"status": "ok", "models": list(models), "queue_depth": batcher.depth}

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    def openapi() -> dict[str, Any]:
        """FastAPI's spec, with the choices of the form fields spelled out (served model ids,
        formats, target languages) for clients and fuzzers."""
        if app.openapi_schema is None:
            spec = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            choices = {"model": list(models), "response_format": list(RESPONSE_FORMATS),
                       "target_language": sorted({x for m in models.values() for x in m.translator.languages})}
            for body in spec.get("components", {}).get("schemas", {}).values():
                for name, prop in body.get("properties", {}).items():
                    if name in choices:
                        prop.pop("anyOf", None)
                        prop.update({"type": "string", "enum": choices[name]})
            app.openapi_schema = spec
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    page_html = PAGE.read_text(encoding="utf-8")  # read once, not per request

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page() -> HTMLResponse:
        return HTMLResponse(page_html)

    return app


def _chat_request(body: dict[str, Any]) -> tuple[str, str, str]:
    """(base64 audio, its format, the question) of a chat completion request: the last
    ``input_audio`` part of the conversation and the text of the last user message."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
        raise ApiError(400, "messages must be a non-empty list of messages", param="messages")
    audio: dict | None = None
    question = ""
    for m in messages:
        if m.get("role") != "user":
            continue
        content = m.get("content")
        parts = [{"type": "text", "text": content}] if isinstance(content, str) else content
        if not isinstance(parts, list):
            raise ApiError(400, "a message's content must be a string or a list of parts", param="messages")
        texts = []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif kind == "input_audio" and isinstance(part.get("input_audio"), dict):
                audio = part["input_audio"]
            else:
                raise ApiError(400, f"unsupported content part {str(part)[:60]!r}: text and input_audio are served",
                               param="messages")
        question = " ".join(t.strip() for t in texts if t.strip())
    if audio is None or not isinstance(audio.get("data"), str):
        raise ApiError(400, "no input_audio part with base64 data in the conversation", param="messages")
    if not question:
        raise ApiError(400, "the last user message asks nothing (no text part)", param="messages")
    fmt = str(audio.get("format") or "wav")
    if not fmt.isalnum():
        raise ApiError(400, f"input_audio.format {fmt!r} is not a format name", param="messages")
    return audio["data"], fmt, question


def _avg_logprob(result: DecodingResult) -> float | None:
    """The best hypothesis's log-probability per token (eos included); None if nothing finished."""
    value = result.best.log_prob / (len(result.tokens) + 1)
    return round(value, 4) if math.isfinite(value) else None


def _compression_ratio(text: str) -> float:
    """Whisper's repetition signal: UTF-8 bytes over their zlib-compressed bytes."""
    raw = text.encode("utf-8")
    return round(len(raw) / len(zlib.compress(raw)), 3) if raw else 0.0


def serve(cfg: ServeConfig, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Load the models, then answer on ``host:port`` until interrupted."""
    import uvicorn  # noqa: PLC0415

    app = create_app(cfg)
    log.info("interpres serve: http://%s:%d/ (%s)", host, port, ", ".join(app.state.models))
    uvicorn.run(app, host=host, port=port, log_level="info")

