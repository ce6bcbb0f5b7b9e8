"""Benchmarks of the simultaneous translator (BENCHMARKS.md, "Simultaneous zh->en").

    .venv/bin/python benchmarks/bench_simul.py stages [--only STAGE]  # what each recipe stage adds
    .venv/bin/python benchmarks/bench_simul.py threshold # the bundled policy's threshold, on dev
    .venv/bin/python benchmarks/bench_simul.py goals     # read the goals off eval-simul/scores.json
    .venv/bin/python benchmarks/bench_simul.py compare --a EVAL_A --b EVAL_B   # paired BLEU differences

``stages`` evaluates the model of each recipe stage with the oracle (full-sentence) and the
segmentation policy on both test parts and writes ``OUT/stages.json``; ``threshold`` sweeps
the segmentation threshold on the dev streams; ``goals`` compares the segmentation policy
with wait-k and local agreement at equal AL and at equal LAAL (linear interpolation on their curves) and with full-sentence
BLEU at LAAL <= 5 (issue 28; <= 6 before it); ``compare`` gives, for every agent two
``interpres eval simul`` output folders share, BLEU of B minus A with its 95% paired
bootstrap interval over the streams. Every run resumes (it is ``interpres eval simul`` underneath).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from simul.evaluate import SimulEvalOptions, evaluate_simul, paired_bleu_difference  # noqa: E402

STAGES = {"pretrain": "runs/simul_pretrain/model", "domain": "runs/simul_domain/model",
          "segments": "runs/simul_segments/model"}
SEGMENTER = "runs/simul_segmenter/model"


def stages(args) -> dict:
    path = Path(args.out) / "stages.json"
    out: dict = json.loads(path.read_text()) if path.exists() else {}
    for stage, model in STAGES.items():
        if args.only and stage != args.only:
            continue
        rep = evaluate_simul(SimulEvalOptions(model=ROOT / model, segmenter=ROOT / SEGMENTER,
                                              policies=["full", f"seg:{args.threshold:g}"], max_docs=args.max_docs,
                                              out=Path(args.out) / stage))
        out[stage] = {part: {"full": r["agents"]["full-sentence"]["BLEU"],
                             "seg": r["agents"][f"seg-{args.threshold:g}"]["BLEU"],
                             "seg_LAAL": r["agents"][f"seg-{args.threshold:g}"]["LAAL"],
                             "seg_threshold": args.threshold}
                      for part, r in rep["parts"].items()}
        print(stage, json.dumps(out[stage]))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({s: out[s] for s in STAGES if s in out}, indent=1))
    print(f"wrote {path}")
    return out


def threshold(args) -> None:
    values = "0.3,0.5,0.7,0.9"
    rep = evaluate_simul(SimulEvalOptions(model=ROOT / args.model, segmenter=ROOT / SEGMENTER, split="dev",
                                          parts=["general"], policies=["full", f"seg:{values}"],
                                          max_docs=args.max_docs,
                                          out=Path(args.out) / "threshold-dev"))
    for part, r in rep["parts"].items():
        print(f"{part} dev")
        for name, s in r["agents"].items():
            print(f"  {name:<14} BLEU {s['BLEU']:6.2f}  AL {s['AL']:6.2f}  LAAL {s['LAAL']:6.2f}")


def interpolate(points: list[tuple[float, float]], x: float) -> float | None:
    """BLEU of a curve of (AL, BLEU) points at AL = x; None outside its range."""
    pts = sorted(points)
    for (x0, y0), (x1, y1) in zip(pts, pts[1:]):
        if x0 <= x <= x1:
            return y0 if x1 == x0 else y0 + (y1 - y0) * (x - x0) / (x1 - x0)
    return None


def goals(args) -> None:
    rep = json.loads(Path(args.scores).read_text())
    for part, r in rep["parts"].items():
        agents = r["agents"]
        full = agents["full-sentence"]["BLEU"]
        print(f"{part}: full-sentence BLEU {full:.2f} (LAAL {agents['full-sentence']['LAAL']:.2f})")
        for metric in ("AL", "LAAL"):
            for fam in ("waitk", "waitk-trained", "la"):
                curve = [(s[metric], s["BLEU"]) for n, s in agents.items() if n.rsplit("-", 1)[0] == fam]
                for name, s in agents.items():
                    if curve and name.startswith("seg-"):
                        ref = interpolate(curve, s[metric])
                        gap = "outside the curve" if ref is None else f"{s['BLEU'] - ref:+.2f} BLEU"
                        print(f"  {name} ({metric} {s[metric]:.2f}, BLEU {s['BLEU']:.2f}) vs {fam} at equal {metric}: {gap}")
        best = max((s["BLEU"] for n, s in agents.items() if n.startswith("seg-") and s["LAAL"] <= args.max_laal),
                   default=None)
        if best is None:
            print(f"  no segmentation point at LAAL <= {args.max_laal:g}")
        else:
            print(f"  best segmentation BLEU at LAAL <= {args.max_laal:g}: {best:.2f} = "
                  f"{100 * best / full:.1f}% of full-sentence")


def read_instances(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def compare(args) -> None:
    """B minus A for every (part, agent) both folders have finished, paired over the streams."""
    a_root, b_root = Path(args.a), Path(args.b)
    for log_b in sorted(b_root.glob("*/*/instances.log")):
        part, agent = log_b.parent.parent.name, log_b.parent.name
        log_a = a_root / part / agent / "instances.log"
        if not log_a.exists():
            continue
        a, b = read_instances(log_a), read_instances(log_b)
        if len(a) != len(b):
            print(f"{part} {agent}: {len(a)} against {len(b)} streams, not compared")
            continue
        d = paired_bleu_difference(a, b)
        print(f"{part:<8} {agent:<16} {len(a)} streams: B - A = {d['difference']:+.2f} BLEU "
              f"[{d['ci'][0]:+.2f}, {d['ci'][1]:+.2f}]")


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("what", choices=["stages", "threshold", "goals", "compare"])
    ap.add_argument("--out", default="eval-simul-bench")
    ap.add_argument("--threshold", type=float, default=0.5)
    ap.add_argument("--model", default=STAGES["segments"])
    ap.add_argument("--max-docs", type=int, default=0)
    ap.add_argument("--only", choices=list(STAGES), default=None, help="stages: this stage only (the others kept)")
    ap.add_argument("--scores", default="eval-simul/scores.json")
    ap.add_argument("--max-laal", type=float, default=5.0, help="goals: the latency bound of the 90%% goal")
    ap.add_argument("--a", help="compare: the baseline 'interpres eval simul' output folder")
    ap.add_argument("--b", help="compare: the folder compared with it")
    args = ap.parse_args()
    if args.what == "compare" and not (args.a and args.b):
        ap.error("compare needs --a and --b")
    {"stages": stages, "threshold": threshold, "goals": goals, "compare": compare}[args.what](args)


if __name__ == "__main__":
    main()
