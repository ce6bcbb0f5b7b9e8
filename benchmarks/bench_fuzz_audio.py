"""A hostile user's audio: N mutated WAVs through every reading path (BENCHMARKS.md, "Broken input").

    .venv/bin/python benchmarks/bench_fuzz_audio.py [--n 1000] [--seed 0] [--out runs/bench_fuzz_audio]

Three paths, each counted as outcomes (read / refused with a message / traceback / hang):

1. ``speech.audio.load_audio`` on each file, in this process, 30 s allowed per file;
2. ``interpres transcribe FILE... --skip-bad`` (the bundled ASR model, greedy) on the files in
   batches of ``--batch``, one process per batch, ``--timeout`` allowed per batch;
3. ``interpres eval mustc --skip-bad`` on a MuST-C tree whose talks are the files (one
   0.25 s segment each from offset 0), so the segment reader meets them too.

A traceback is any stderr holding "Traceback"; a hang is a path past its time limit. The
mutations are tests/support/wav_fuzz.py's. Writes OUT/outcomes.jsonl (path 1, per file),
OUT/results.json and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import collections
import json
import logging
import signal
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "support"))

from speech.audio import AudioError, load_audio  # noqa: E402
from wav_fuzz import base_wavs, mutations  # noqa: E402

CLI = [sys.executable, "-m", "interpres"]


class _Hang(Exception):
    pass


def _alarm(*_):
    raise _Hang


def loader(files: list[Path], out: Path) -> dict:
    counts: collections.Counter = collections.Counter()
    signal.signal(signal.SIGALRM, _alarm)
    with open(out / "outcomes.jsonl", "w", encoding="utf-8") as f:
        for path in files:
            t0 = time.perf_counter()
            signal.alarm(30)
            try:
                audio = load_audio(path)
                outcome, detail = "read", f"{len(audio) / 16000:.2f} s"
            except AudioError as e:
                outcome, detail = "refused", str(e)
            except _Hang:
                outcome, detail = "hang", "over 30 s"
            except Exception:  # what the fuzz is for: anything but AudioError is a defect
                outcome, detail = "traceback", traceback.format_exc()
            finally:
                signal.alarm(0)
            counts[outcome] += 1
            f.write(json.dumps({"file": path.name, "outcome": outcome, "detail": detail,
                                "seconds": round(time.perf_counter() - t0, 3)}) + "\n")
    return dict(counts)


def _run(cmd: list[str], timeout: float) -> tuple[str, int | None, str]:
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return "hang", None, ""
    return ("traceback" if "Traceback" in p.stderr else "clean"), p.returncode, p.stderr


def transcribe(files: list[Path], out: Path, batch: int, timeout: float) -> dict:
    counts: collections.Counter = collections.Counter()
    rcs: collections.Counter = collections.Counter()
    for i in range(0, len(files), batch):
        chunk = files[i:i + batch]
        outcome, rc, err = _run([*CLI, "transcribe", *map(str, chunk), "--skip-bad", "--beam", "1",
                                 "--format", "json", "--out", str(out / f"transcribe-{i:04d}.json")], timeout)
        counts[outcome] += 1
        rcs[str(rc)] += 1
        if outcome != "clean":
            (out / f"transcribe-{i:04d}.stderr").write_text(err)
        print(f"transcribe {i}-{i + len(chunk) - 1}: {outcome}, exit {rc}", flush=True)
    return {"batches": dict(counts), "exit_status": dict(rcs)}


def eval_mustc(files: list[Path], out: Path, timeout: float) -> dict:
    split = out / "mustc" / "en-asr" / "data" / "fuzz"
    (split / "txt").mkdir(parents=True, exist_ok=True)
    (split / "wav").mkdir(exist_ok=True)
    for f in files:
        link = split / "wav" / f.name
        if not link.exists():
            link.symlink_to(f.resolve())
    (split / "txt" / "fuzz.yaml").write_text("".join(
        f"- {{duration: 0.25, offset: 0.0, speaker_id: spk, wav: {f.name}}}\n" for f in files))
    (split / "txt" / "fuzz.en").write_text("a chirp\n" * len(files))
    outcome, rc, err = _run([*CLI, "eval", "mustc", "--root", str(out / "mustc"), "--pairs", "en-asr",
                             "--split", "fuzz", "--skip-bad", "--beam", "1", "--out", str(out / "eval")], timeout)
    (out / "eval-mustc.stderr").write_text(err)
    skipped = None
    if (out / "eval" / "scores.json").exists():
        scores = json.loads((out / "eval" / "scores.json").read_text())
        skipped = next(iter(scores["pairs"].values())).get("n_skipped") if "pairs" in scores else None
    return {"outcome": outcome, "exit_status": rc, "segments": len(files), "skipped": skipped}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=100)
    ap.add_argument("--timeout", type=float, default=900.0, help="seconds per CLI process")
    ap.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_fuzz_audio")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    wav_dir = args.out / "wav"
    wav_dir.mkdir(parents=True, exist_ok=True)
    files = []
    for name, data in mutations(base_wavs(), args.n, args.seed):
        path = wav_dir / f"{name}.wav"
        path.write_bytes(data)
        files.append(path)
    t0 = time.perf_counter()
    results = {"n": args.n, "seed": args.seed, "load_audio": loader(files, args.out)}
    print("load_audio:", results["load_audio"], flush=True)
    results["transcribe"] = transcribe(files, args.out, args.batch, args.timeout)
    results["eval_mustc"] = eval_mustc(files, args.out, args.timeout)
    results["seconds"] = round(time.perf_counter() - t0, 1)
    (args.out / "results.json").write_text(json.dumps(results, indent=1))
    la, tr, ev = results["load_audio"], results["transcribe"], results["eval_mustc"]
    print(f"\n| path | files | read | refused | tracebacks | hangs |\n|---|---:|---:|---:|---:|---:|\n"
          f"| load_audio | {args.n} | {la.get('read', 0)} | {la.get('refused', 0)} | {la.get('traceback', 0)} | "
          f"{la.get('hang', 0)} |\n"
          f"| interpres transcribe --skip-bad ({sum(tr['batches'].values())} processes, exit "
          f"{tr['exit_status']}) | {args.n} | | | {tr['batches'].get('traceback', 0)} | {tr['batches'].get('hang', 0)} |\n"
          f"| interpres eval mustc --skip-bad (exit {ev['exit_status']}) | {args.n} | "
          f"{args.n - (ev['skipped'] or 0) if ev['skipped'] is not None else ''} | {ev['skipped']} | "
          f"{int(ev['outcome'] == 'traceback')} | {int(ev['outcome'] == 'hang')} |")
    print(f"wrote {args.out / 'results.json'} ({results['seconds']} s)")


if __name__ == "__main__":
    main()
