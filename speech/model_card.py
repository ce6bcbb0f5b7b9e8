"""Model cards, and bundling a trained model into the package.

    python -m speech.model_card bundle runs/st_small/model speech/models/default \\
        --scores eval-tst-COMMON/scores.json --scores eval-tst-VOICE/scores.json
    python -m speech.model_card bundle runs/asr_small/model speech/models/asr \\
        --scores runs/asr_small/eval-tst-COMMON/scores.json ...   # the ASR model beside it

``bundle`` stores the weights as fp16 safetensors (half the size; loading upcasts to
fp32), copies the tokenizer, and writes ``README.md``: what the model does, how it was
made (the recipe and the commands), on what data, and its scores, so a model directory
says everything a user needs to trust or reproduce it.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from speech.data.cache import atomic_dir, write_text_atomic
from speech.model import load_model_dir, param_count, save_model_dir

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


def model_card(model_dir: Path, scores: list[dict[str, Any]] | None = None) -> str:
    """The README.md of a model directory: the translator's (task st) or the ASR model's."""
    model, conf = load_model_dir(model_dir)
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
        *RECIPE_HEAD,
        "interpres train asr configs/speech/asr_small.yaml  # ASR pretraining",
        f"interpres train mt configs/speech/mt_small.yaml    # {text_pretraining}",
        "interpres train st configs/speech/st_small.yaml    # ST: encoder from ASR, decoder from the text model",
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


# how both cards' recipes start: the corpus builders, before each model's own training commands
RECIPE_HEAD = [
    "## Recipe",
    "Made by this repository's own recipe, from nothing but registry packages (`make default-model`):",
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
        *RECIPE_HEAD,
        "interpres train asr configs/speech/asr_small.yaml  # this model",
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


def bundle(src: Path, dst: Path, score_files: list[Path]) -> Path:
    """Copy the model at ``src`` to ``dst`` as fp16, with its tokenizer and a model card."""
    model, conf = load_model_dir(src)
    extra = {k: v for k, v in conf.items() if k != "model"}
    scores = [json.loads(p.read_text(encoding="utf-8")) for p in score_files]
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
    card = sub.add_parser("card", help="print the model card of a model directory")
    card.add_argument("model_dir", type=Path)
    args = ap.parse_args()
    if args.cmd == "bundle":
        out = bundle(args.src, args.dst, args.scores)
        print(f"bundled {out} ({sum(p.stat().st_size for p in out.iterdir()) / 1e6:.1f} MB)")
    else:
        print(model_card(args.model_dir))


if __name__ == "__main__":
    main()
