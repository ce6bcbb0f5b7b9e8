"""Shared by the tests of interpres serve: tiny models, WAVs and a server on localhost."""

import socket
import threading
import time

import numpy as np
import soundfile as sf
import uvicorn

from speech.decode import DecodingOptions
from speech.translate import resolve_ctc_weight, translate_files

SR = 16000
KEY = "sk-test-key"


def write_wav(path, seconds=3.0, bursts=((0.3, 1.0), (1.6, 2.4)), seed=0):
    """Tone bursts over faint noise: two segments for the pause cutter."""
    t = np.arange(int(seconds * SR)) / SR
    wave = 1e-3 * np.random.default_rng(seed).standard_normal(len(t))
    for start, end in bursts:
        on = (t >= start) & (t < end)
        wave[on] += 0.5 * np.sin(2 * np.pi * (440 + 40 * seed) * t[on])
    sf.write(path, wave.astype(np.float32), SR)
    return path


def specs(root):
    """The --model arguments of the two tiny models under ``root``: ids st and asr."""
    return [f"st={root / 'st'}", f"asr={root / 'asr'}"]


def expected(app, model, wav, lang):
    """What `interpres translate` / `transcribe` gives for the same model and beam."""
    tr = app.state.models[model].translator
    opts = DecodingOptions(beam_size=2, ctc_weight=resolve_ctc_weight(tr, None))
    (res,) = translate_files(tr, [wav], [lang], opts)
    return res


class LocalServer:
    """``app`` under uvicorn in a thread, on a free localhost port."""

    def __init__(self, app):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 10
        while not self.server.started and time.time() < deadline:
            time.sleep(0.05)
        assert self.server.started, "the server did not start"
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)
