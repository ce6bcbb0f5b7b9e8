"""Load test of ``interpres serve``: concurrent clients for a fixed time, batching on against off.

    python benchmarks/bench_serve.py [--clients 50] [--seconds 60] [--modes batched,unbatched]
                                     [--model teacher] [--json OUT] [--plot OUT.png]
                                     [--screenshot docs/serve.png] [--server-arg=--runtime --server-arg=torch]
    python benchmarks/bench_serve.py --decode-only    # the model alone at batch 1, 4, 8, 16

For each mode a fresh server is started as a user starts it (``interpres serve`` in a
subprocess on a free localhost port; ``unbatched`` adds ``--no-batching``), and the time
until ``/healthz`` answers is measured. Then ``--clients`` clients (asyncio + httpx), each
sending its next request as soon as the last one is answered, run for ``--seconds``: half
transcriptions, half translations into a language drawn from the ten (both asked of
``--st-model``/``--asr-model``: by default the teacher, which does both), on clips of mixed length: single utterances of tst-COMMON of the ``small``
corpus (1-6 s) and every fourth request three of them joined (5-15 s). Where that corpus
is missing, clips are synthesized with espeak-ng.

Counted per mode: answered (200), refused (429), errors (anything else, client timeouts
and connection errors included), lost (sent and never answered: must be 0), requests per
second (200s over the wall time), latency p50/p95/p99 of the 200s. Requests in flight
when the time is up are awaited, not dropped. Prints a Markdown table; ``--plot`` writes
the latency distributions.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

LANGS = ["de", "es", "fr", "it", "nl", "pt", "ro", "ru", "ja", "zh"]
SR = 16000


def wav_bytes(wave: np.ndarray) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, wave, SR, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def clips(n: int = 40) -> tuple[list[bytes], str]:
    """``n`` utterances, and ``n // 3`` joins of three: WAV bytes of mixed length."""
    from speech.data.cache import interpres_home
    from speech.data.mustc import MustcSplit, load_segment

    root = interpres_home() / "speech" / "small"
    if (root / "en-de" / "data" / "tst-COMMON").is_dir():
        waves = [load_segment(s) for s in list(MustcSplit(root, "en-de", "tst-COMMON"))[:n]]
        source = f"{root}/en-de/tst-COMMON, first {len(waves)}"
    else:
        sentences = ["Save all changes before closing the window.", "The file could not be opened.",
                     "Select the layer you want to export.", "Do you want to replace the existing file?",
                     "No printer was found on this computer.", "Enter a valid number."]
        waves = []
        with tempfile.TemporaryDirectory() as tmp:
            for i, text in enumerate(sentences):
                out = Path(tmp) / f"{i}.wav"
                subprocess.run(["espeak-ng", "-v", "en-us", "-w", str(out), text], check=True)
                w, sr = sf.read(out, dtype="float32")
                from speech.audio import resample

                waves.append(resample(w, sr, SR))
        source = f"{len(waves)} sentences spoken by espeak-ng"
    gap = np.zeros(SR // 2, dtype=np.float32)
    joined = [np.concatenate([waves[i], gap, waves[(i + 1) % len(waves)], gap, waves[(i + 2) % len(waves)]])
              for i in range(0, len(waves), 3)]
    return [wav_bytes(w) for w in waves + joined], source


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(models: list[str], batched: bool, port: int, extra: list[str]) -> tuple[subprocess.Popen, float]:
    import httpx

    cmd = [sys.executable, "-m", "interpres", "serve", "--port", str(port)]
    cmd += [a for m in models for a in ("--model", m)] + ([] if batched else ["--no-batching"]) + extra
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    while True:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited: {proc.stderr.read()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc, time.perf_counter() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.05)


async def load(url: str, payloads: list[bytes], clients: int, seconds: float, st_model: str, asr_model: str,
               seed: int = 0) -> dict:
    import httpx

    rng = random.Random(seed)
    latencies: list[float] = []
    counts = {"ok": 0, "refused": 0, "errors": 0, "sent": 0}
    errors: dict[str, int] = {}
    stop = time.perf_counter() + seconds

    async def client(c: int, http: httpx.AsyncClient) -> None:
        i = c
        while time.perf_counter() < stop:
            data = payloads[i % len(payloads)]
            i += clients
            if rng.random() < 0.5:
                path, form = "/v1/audio/transcriptions", {"model": asr_model}
            else:
                path, form = "/v1/audio/translations", {"model": st_model, "target_language": rng.choice(LANGS)}
            counts["sent"] += 1
            t0 = time.perf_counter()
            try:
                r = await http.post(url + path, data=form, files={"file": ("clip.wav", data, "audio/wav")})
                status = r.status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            if status == 200:
                counts["ok"] += 1
                latencies.append(time.perf_counter() - t0)
            elif status == 429:
                counts["refused"] += 1
                await asyncio.sleep(0.5)
            else:
                counts["errors"] += 1
                errors[str(status)] = errors.get(str(status), 0) + 1

    t0 = time.perf_counter()
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(timeout=300, limits=limits) as http:
        await asyncio.gather(*(client(c, http) for c in range(clients)))
    wall = time.perf_counter() - t0
    lat = sorted(latencies)

    def pct(p: float) -> float:
        return lat[min(len(lat) - 1, int(round(p / 100 * (len(lat) - 1))))] if lat else float("nan")

    answered = counts["ok"] + counts["refused"] + counts["errors"]
    return {**counts, "lost": counts["sent"] - answered, "error_kinds": errors, "wall_s": round(wall, 1),
            "rps": round(counts["ok"] / wall, 2), "p50_s": round(pct(50), 2), "p95_s": round(pct(95), 2),
            "p99_s": round(pct(99), 2), "mean_s": round(statistics.fmean(lat), 2) if lat else None,
            "latencies": [round(x, 3) for x in latencies]}


DEMO_TEXT = "Save all changes before closing the window."  # make demo's sentence


def screenshot(url: str, out: Path) -> None:
    """The web page after translating make demo's sentence (espeak-ng en-us+f3) into French,
    in headless Chromium."""
    import shutil

    from selenium import webdriver
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select, WebDriverWait

    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=900,820"):
        opts.add_argument(arg)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(options=opts, service=webdriver.ChromeService(shutil.which("chromedriver")))
    try:
        with tempfile.TemporaryDirectory() as tmp:
            wav = Path(tmp) / "save-all-changes.wav"
            subprocess.run(["espeak-ng", "-v", "en-us+f3", "-w", str(wav), DEMO_TEXT], check=True)
            driver.get(url + "/")
            wait = WebDriverWait(driver, 60)
            wait.until(lambda d: len(Select(d.find_element(By.ID, "model")).options) > 0)
            driver.find_element(By.ID, "file").send_keys(str(wav))
            driver.find_element(By.CSS_SELECTOR, "input[name=task][value=translate]").click()
            Select(driver.find_element(By.ID, "lang")).select_by_value("fr")
            driver.find_element(By.ID, "go").click()
            wait.until(lambda d: d.find_element(By.ID, "timing").text.startswith("answered in"))
            out.parent.mkdir(parents=True, exist_ok=True)
            driver.save_screenshot(str(out))
    finally:
        driver.quit()


def decode_only(model: str, runtimes: list[str], sizes: list[int], n: int = 32) -> None:
    """The model alone, no HTTP: ``n`` clips (the load test's, each into a language drawn as the
    load test draws them, half English) decoded in batches of each size with
    ``Translator.decode_each``; prints seconds per request. Shows whether batching can pay."""
    from speech.audio import decode_audio
    from speech.decode import DecodingOptions
    from speech.translate import load_translator, resolve_ctc_weight

    payloads, _ = clips()
    rng = random.Random(0)
    print("| runtime | " + " | ".join(f"batch {b} (s / request)" for b in sizes) + " |")
    print("|---|" + "---:|" * len(sizes))
    for runtime in runtimes:
        tr = load_translator(model, runtime=runtime)
        items = [(tr.features(decode_audio(payloads[i % len(payloads)], "clip")),
                  "en" if rng.random() < 0.5 else rng.choice(LANGS)) for i in range(n)]
        opts = DecodingOptions(beam_size=5, ctc_weight=resolve_ctc_weight(tr, None))
        tr.decode_each([items[0][0]], [items[0][1]], opts)  # warm-up
        row = []
        for b in sizes:
            t0 = time.perf_counter()
            for i in range(0, n, b):
                tr.decode_each([f for f, _ in items[i:i + b]], [lang for _, lang in items[i:i + b]], opts)
            row.append((time.perf_counter() - t0) / n)
        print(f"| {runtime} | " + " | ".join(f"{x:.3f}" for x in row) + " |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--modes", default="batched,unbatched")
    ap.add_argument("--model", action="append", default=None,
                    help="served models (default: what interpres serve serves with no --model)")
    ap.add_argument("--st-model", default="teacher", help="the model id translations ask for (default: teacher)")
    ap.add_argument("--asr-model", default="teacher", help="the model id transcriptions ask for (default: teacher)")
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None)
    ap.add_argument("--screenshot", type=Path, default=None, help="also save the web page (needs chromium)")
    ap.add_argument("--server-arg", action="append", default=[], help="more arguments for interpres serve")
    ap.add_argument("--decode-only", action="store_true",
                    help="no server: the st model alone at batch sizes 1, 4, 8, 16 on onnx and torch")
    args = ap.parse_args()
    if args.decode_only:
        decode_only(args.st_model, ["onnx", "torch"], [1, 4, 8, 16])
        return
    payloads, source = clips()
    durations = [sf.info(io.BytesIO(p)).duration for p in payloads]
    print(f"clips: {source}; {len(payloads)} of {min(durations):.1f}-{max(durations):.1f} s "
          f"(median {statistics.median(durations):.1f} s)", file=sys.stderr)
    rows = []
    for mode in args.modes.split(","):
        port = free_port()
        proc, startup = start_server(args.model or [], mode == "batched", port, args.server_arg)
        try:
            url = f"http://127.0.0.1:{port}"
            if args.screenshot is not None and mode == args.modes.split(",")[0]:
                screenshot(url, args.screenshot)
            print(f"{mode}: server up in {startup:.1f} s; {args.clients} clients for {args.seconds:g} s",
                  file=sys.stderr)
            res = asyncio.run(load(url, payloads, args.clients, args.seconds, args.st_model, args.asr_model))
            import httpx

            metrics = httpx.get(url + "/metrics").text
            batches = [line for line in metrics.splitlines() if line.startswith("interpres_batch_requests_")]
            count = float(next(x for x in batches if x.startswith("interpres_batch_requests_count")).split()[1])
            total = float(next(x for x in batches if x.startswith("interpres_batch_requests_sum")).split()[1])
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(30)
        rows.append({"mode": mode, "startup_s": round(startup, 2), "mean_batch": round(total / max(count, 1), 2),
                     **res})
        print(f"{mode}: {res['ok']} answered, {res['rps']} req/s, p50 {res['p50_s']} s", file=sys.stderr)

    print("| mode | startup (s) | answered | 429 | errors | lost | req/s | p50 (s) | p95 (s) | p99 (s) | "
          "requests per batch |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['mode']} | {r['startup_s']:.1f} | {r['ok']} | {r['refused']} | {r['errors']} | {r['lost']} | "
              f"{r['rps']:.2f} | {r['p50_s']:.2f} | {r['p95_s']:.2f} | {r['p99_s']:.2f} | {r['mean_batch']:.2f} |")
    by = {r["mode"]: r for r in rows}
    if "batched" in by and "unbatched" in by and by["unbatched"]["rps"]:
        print(f"\nthroughput batched / unbatched: {by['batched']['rps'] / by['unbatched']['rps']:.2f}x")
    if args.json is not None:
        args.json.write_text(json.dumps({"clips": source, "clients": args.clients, "seconds": args.seconds,
                                         "rows": rows}, indent=2))
    if args.plot is not None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for r in rows:
            lat = sorted(r["latencies"])
            ax.plot(lat, np.arange(1, len(lat) + 1) / len(lat), label=f"{r['mode']} ({r['rps']:.2f} req/s)")
        ax.set_xlabel("latency (s)")
        ax.set_ylabel("share of answered requests")
        ax.set_title(f"interpres serve: {args.clients} clients, {args.seconds:g} s, 2 cores")
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
