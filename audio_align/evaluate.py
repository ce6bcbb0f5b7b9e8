"""``interpres eval aha`` and ``interpres ask``: the LALM answering questions about audio.

AHA-Eval here is the test split of a scene corpus: scenes built from held-out sound files
and asked with held-out question templates. Accuracy is reported per hallucination kind
(omission, identity, temporal, quantitative), on the general multiple-choice set, and
``overall`` (every non-caption question), each with a 95% bootstrap interval over
questions. The ``prior`` rows isolate the questions that probe a co-occurrence rule the
training scenes obey (is the usual follower there? which came first?): a model that
answers from the language prior instead of the audio scores lower on the test scenes that
break the rule than on those that keep it; that difference is the hallucination gap.
Captions are scored by chrF against the reference caption and by the F1 of the sound
classes they name.

Predictions are appended to ``predictions.jsonl`` as they are made, so a killed
evaluation resumes where it stopped.
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from audio_align import qa
from audio_align.lalm import AudioFrontEnd, AudioLanguageModel, ChatTokenizer, LalmError, load_lalm_dir, pad_audio
from compress.errors import UserError
from compress.files import atomic_path, write_json_atomic, write_text_atomic

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).resolve().parent / "models" / "default"
ROWS = ("overall", *qa.KINDS, qa.GENERAL)


class AhaEvalError(UserError, ValueError):
    """A model, corpus or output the evaluation cannot use; the message names it."""


def resolve_model(model: str | Path | None) -> Path:
    """``None`` or "default": the bundled LALM; a name of another bundled one ("sft", the
    model before alignment) unless a directory of that name is here; else a directory."""
    name = "default" if model is None else str(model)
    bundled = BUNDLED_DIR.parent / name
    if name == "default" or ("/" not in name and not Path(name).exists() and (bundled / "config.json").is_file()):
        if not (bundled / "config.json").is_file():
            raise LalmError(f"no bundled audio-language model in {bundled}; pass --model DIR "
                            "(train one with 'interpres train lalm')")
        return bundled
    return Path(model)


@torch.no_grad()
def answer(model: AudioLanguageModel, tok: ChatTokenizer, states: Sequence[torch.Tensor], questions: Sequence[str],
           batch: int = 32, max_new_tokens: int = 48, temperature: float = 0.0, seed: int = 0) -> list[str]:
    """One answer per (encoder states, question), batched by length: greedy, or sampled at
    ``temperature`` (repeatable for ``seed``)."""
    device = next(model.parameters()).device
    model.eval()
    order = sorted(range(len(questions)), key=lambda i: len(states[i]))
    out: list[str] = [""] * len(questions)
    gen = torch.Generator().manual_seed(seed)
    for k in range(0, len(order), batch):
        idx = order[k:k + batch]
        audio, lens = pad_audio([states[i].float() for i in idx])
        prompts = [tok.prompt(questions[i], model.cfg.audio_tokens(len(states[i]))) for i in idx]
        ids = model.generate(prompts, audio.to(device), lens.to(device), tok.im_end, max_new_tokens,
                             temperature=temperature, generator=gen)
        for i, g in zip(idx, ids):
            out[i] = tok.decode(g)
    return out


@torch.no_grad()
def choose(model: AudioLanguageModel, tok: ChatTokenizer, states: Sequence[torch.Tensor], questions: Sequence[str],
           options: Sequence[Sequence[str]], batch: int = 32) -> list[str]:
    """Guided choice (vLLM's ``guided_choice``; multiple choice as lm-eval-harness scores it):
    per question, the option the model is likeliest to answer in full, i.e. the highest summed
    log-probability of the option's pieces and the closing ``<|im_end|>`` given the audio and
    the question. The first option wins a tie."""
    from audio_align.lalm import sequence_logps
    from audio_align.train import chat_batch
    from speech.loop import to_device

    if len(options) != len(questions):
        raise LalmError(f"{len(questions)} questions but {len(options)} option lists")
    for q, opts in zip(questions, options):
        if not opts or not all(isinstance(o, str) and o.strip() for o in opts):
            raise LalmError(f"guided choice needs non-empty options; got {list(opts)!r} for {q!r}")
    device = next(model.parameters()).device
    model.eval()
    rows = sorted(((i, o) for i in range(len(questions)) for o in range(len(options[i]))),
                  key=lambda r: len(states[r[0]]))
    best: list[tuple[float, str]] = [(-math.inf, "")] * len(questions)
    for k in range(0, len(rows), batch):
        part = rows[k:k + batch]
        convs = [tok.conversation([(questions[i], options[i][o])], model.cfg.audio_tokens(len(states[i])))
                 for i, o in part]
        b = to_device(chat_batch(convs, [states[i].float() for i, _ in part]), device)
        lp, _ = sequence_logps(model(b["input_ids"], b["attention_mask"], b["audio"], b["audio_lens"]), b["labels"])
        for (i, o), v in zip(part, lp.tolist()):
            if v > best[i][0]:
                best[i] = (v, options[i][o])
    return [text for _, text in best]


def bootstrap_interval(correct: Sequence[bool], n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% percentile bootstrap interval of the mean of ``correct``."""
    x = np.asarray(correct, dtype=np.float64)
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n, len(x)))].mean(1)
    return float(np.percentile(means, 2.5)), float(np.percentile(means, 97.5))


def _row(correct: list[bool]) -> dict:
    lo, hi = bootstrap_interval(correct)
    return {"n": len(correct), "correct": int(sum(correct)),
            "accuracy": float(np.mean(correct)) if correct else float("nan"), "ci95": [lo, hi]}


def _row_masks(questions: Sequence[qa.Question]) -> dict[str, np.ndarray]:
    """The rows of a table (overall: every non-caption question, each kind, general, and the
    prior-probing questions of prior-keeping and prior-breaking scenes) as masks over questions."""
    masks = {"overall": [q.kind != qa.CAPTION for q in questions]}
    for kind in (*qa.KINDS, qa.GENERAL):
        masks[kind] = [q.kind == kind for q in questions]
    for prior in ("consistent", "breaking"):
        masks[f"prior_{prior}"] = [q.probes_prior and q.prior == prior for q in questions]
    return {k: np.asarray(v) for k, v in masks.items() if any(v)}


def accuracy_table(questions: Sequence[qa.Question], predictions: Sequence[str]) -> dict[str, dict]:
    """Accuracy (with its bootstrap interval) overall, per kind, on general QA, and on the
    prior-probing questions of prior-keeping and prior-breaking scenes."""
    ok = np.asarray([qa.is_correct(q, p) for q, p in zip(questions, predictions)], dtype=bool)
    return {k: _row([bool(x) for x in ok[mask]]) for k, mask in _row_masks(questions).items()}


def caption_scores(refs: Sequence[str], hyps: Sequence[str], classes: Sequence[str]) -> dict:
    from sacrebleu.metrics import CHRF

    tp = fp = fn = 0
    for r, h in zip(refs, hyps):
        want, got = qa.caption_events(r, classes), qa.caption_events(h, classes)
        tp += len(want & got)
        fp += len(got - want)
        fn += len(want - got)
    f1 = 2 * tp / max(1, 2 * tp + fp + fn)
    metric = CHRF()
    chrf = metric.corpus_score(list(hyps), [list(refs)])
    return {"n": len(refs), "chrf": round(chrf.score, 2), "event_f1": round(f1, 4), "signature": str(metric.get_signature())}


def _plot(table: dict, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in (*ROWS, "prior_consistent", "prior_breaking") if k in table]
    acc = [100 * table[k]["accuracy"] for k in keys]
    err = np.array([[100 * (table[k]["accuracy"] - table[k]["ci95"][0]), 100 * (table[k]["ci95"][1] - table[k]["accuracy"])]
                    for k in keys]).T
    fig, ax = plt.subplots(figsize=(8, 3.6))
    colors = ["#444"] + ["#3b7dd8"] * len(qa.KINDS) + ["#49a86b"] + ["#d89b3b", "#d8503b"]
    ax.bar(range(len(keys)), acc, yerr=err, color=colors[:len(keys)], capsize=3)
    ax.set_xticks(range(len(keys)), [k.replace("prior_", "prior:\n") for k in keys], fontsize=8)
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_title(title, fontsize=9)
    for i, a in enumerate(acc):
        ax.text(i, a + 2, f"{a:.0f}", ha="center", fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


def compare(questions: Sequence[qa.Question], correct: Sequence[bool], base_correct: Sequence[bool],
            n: int = 1000, seed: int = 0) -> dict[str, dict]:
    """Per row: the baseline's accuracy, this model's, and the difference with its 95% paired
    bootstrap interval (the same resampled questions for both)."""
    rng = np.random.default_rng(seed)
    a, b = np.asarray(correct, dtype=np.float64), np.asarray(base_correct, dtype=np.float64)
    out = {}
    for row, mask in _row_masks(questions).items():
        idx = np.flatnonzero(mask)
        d = a[idx] - b[idx]
        boot = d[rng.integers(0, len(d), size=(n, len(d)))].mean(1)
        out[row] = {"n": int(len(idx)), "baseline": float(b[idx].mean()), "accuracy": float(a[idx].mean()),
                    "delta": float(d.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))]}
    return out


def _read_baseline(base: Path, questions: Sequence[qa.Question], asked: str) -> list[bool]:
    """The per-question correctness of another evaluation of the same questions (``asked``:
    the part of a predictions key that names the questions; decoding options may differ)."""
    path = base / "predictions.jsonl"
    if not path.is_file():
        raise AhaEvalError(f"{base}: no predictions.jsonl (the --baseline is an 'eval aha' output directory)")
    lines = path.read_text(encoding="utf-8", errors="replace").splitlines()
    try:
        key = json.loads(lines[0]).get("key", "") if lines else ""
        rows = {r["i"]: r for r in (json.loads(x) for x in lines[1:] if x.strip())}
    except (json.JSONDecodeError, KeyError, AttributeError) as e:
        raise AhaEvalError(f"{path}: not an eval aha predictions file ({e})") from None
    theirs = key.split("|", 1)[-1]
    if theirs != asked and not theirs.startswith(asked + "|"):
        raise AhaEvalError(f"{path}: evaluated {theirs!r}, not {asked!r}: not the same questions")
    missing = [i for i in range(len(questions)) if i not in rows]
    if missing:
        raise AhaEvalError(f"{path}: {len(missing)} of {len(questions)} questions unanswered (finish that evaluation first)")
    for i, q in enumerate(questions):
        if rows[i]["question"] != q.question:
            raise AhaEvalError(f"{path}: question {i} differs ({rows[i]['question']!r} vs {q.question!r})")
    return [qa.is_correct(q, rows[i]["prediction"]) for i, q in enumerate(questions)]


def _comparison_markdown(cmp: dict, base: Path) -> str:
    lines = ["", f"## Against {base}", "", "| set | questions | baseline | this | difference | 95% paired CI |",
             "|---|---:|---:|---:|---:|---|"]
    for k, v in cmp.items():
        lines.append(f"| {k} | {v['n']} | {100 * v['baseline']:.1f} | {100 * v['accuracy']:.1f} | "
                     f"{100 * v['delta']:+.1f} | [{100 * v['ci95'][0]:+.1f}, {100 * v['ci95'][1]:+.1f}] |")
    return "\n".join(lines) + "\n"


def _markdown(table: dict, captions: dict | None, name: str) -> str:
    lines = [f"# AHA-Eval: {name}", "", "| set | questions | accuracy | 95% CI |", "|---|---:|---:|---|"]
    for k, v in table.items():
        lines.append(f"| {k} | {v['n']} | {100 * v['accuracy']:.1f} | "
                     f"[{100 * v['ci95'][0]:.1f}, {100 * v['ci95'][1]:.1f}] |")
    if "prior_consistent" in table and "prior_breaking" in table:
        gap = 100 * (table["prior_consistent"]["accuracy"] - table["prior_breaking"]["accuracy"])
        lines += ["", f"Hallucination gap (prior-keeping minus prior-breaking scenes, prior-probing questions): "
                      f"{gap:+.1f} points."]
    if captions:
        lines += ["", f"Captions ({captions['n']}): chrF {captions['chrf']}, sound-class F1 {captions['event_f1']:.3f}."]
    return "\n".join(lines) + "\n"


def evaluate_aha(model_dir: str | Path | None, scenes: str, out: str | Path, split: str = "test",
                 max_scenes: int = 0, batch: int = 32, seed: int = 0, no_audio: bool = False,
                 train_templates: bool = False, baseline: str | Path | None = None,
                 coda: tuple[float, int] | None = None, guided_choice: bool = False) -> dict:
    """Answer every question of ``split``; write predictions.jsonl, scores.json/md/png under ``out``.
    ``no_audio``: the encoder states are zeroed, so the answers are what the LM's priors say
    without hearing anything (a diagnostic baseline; not for Qwen2-Audio directories).
    ``train_templates``: ask in the training templates instead of the split's own (for the test
    split: its held-out sounds without its held-out wording, to tell the two apart).
    ``baseline``: another evaluation's output directory of the same questions (e.g. the
    model before alignment): differences per row with paired bootstrap intervals.
    ``guided_choice``: questions with options (the general set) are answered by :func:`choose`,
    the option the model is likeliest to answer, instead of free generation parsed for one."""
    from audio_align.encoded import encode_scenes
    from audio_align.hf_audio import HFAudioLM, is_hf_audio_dir
    from audio_align.scenes import corpus_root, read_manifest, read_scenes
    from speech.audio import load_audio
    from speech.loop import Progress

    path = resolve_model(model_dir)
    coda_info = None
    root = corpus_root(scenes)
    manifest = read_manifest(root)
    scene_list = read_scenes(root, split)
    if max_scenes:
        scene_list = scene_list[:max_scenes]
    questions = qa.build_questions(scene_list, "train" if train_templates else split, manifest["classes"],
                                   qa.rules_of(manifest), seed)
    if is_hf_audio_dir(path):  # a Qwen2-Audio directory: its own processor hears the waveforms
        if no_audio:
            raise AhaEvalError(f"{path}: --no-audio is for LALM directories, not Qwen2-Audio ones")
        hf = HFAudioLM(path)
        wav = {s["id"]: root / split / s["wav"] for s in scene_list}

        def predict(idx: list[int]) -> list[str]:
            return hf.answer([load_audio(wav[questions[i].scene]) for i in idx], [questions[i].question for i in idx])
        if coda or guided_choice:
            raise AhaEvalError(f"{path}: --coda and --guided-choice are for LALM directories, not Qwen2-Audio ones")
    else:
        import contextlib

        from audio_align.coda import amplified, select_heads

        model, tok, _ = load_lalm_dir(path)
        frontend = AudioFrontEnd.of(model.cfg, ear=model.ear)
        states = encode_scenes(root, split, scene_list, frontend)
        if no_audio:
            states = {k: torch.zeros_like(v) for k, v in states.items()}
        listen = contextlib.nullcontext
        if coda:
            dev = read_scenes(root, "dev")[:40]
            dev_states = encode_scenes(root, "dev", dev, frontend)
            dev_q = [q for q in qa.build_questions(dev, "dev", manifest["classes"], qa.rules_of(manifest), seed)
                     if q.kind != qa.CAPTION]
            heads = select_heads(model, tok, [dev_states[q.scene] for q in dev_q], [q.question for q in dev_q], coda[1])
            log.info("CoDA: value states of the audio x%g in heads (layer, kv head) %s", coda[0], heads)
            coda_info = {"scale": coda[0], "top_k": coda[1], "heads": heads}
            listen = lambda: amplified(model, heads, coda[0])  # noqa: E731 - a fresh block per batch

        def predict(idx: list[int]) -> list[str]:
            picked = [i for i in idx if guided_choice and questions[i].options]
            free = [i for i in idx if not (guided_choice and questions[i].options)]
            out: dict[int, str] = {}
            with listen():
                if free:
                    out.update(zip(free, answer(model, tok, [states[questions[i].scene] for i in free],
                                                [questions[i].question for i in free], batch=batch)))
                if picked:
                    out.update(zip(picked, choose(model, tok, [states[questions[i].scene] for i in picked],
                                                  [questions[i].question for i in picked],
                                                  [questions[i].options for i in picked], batch=batch)))
            return [out[i] for i in idx]
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pred_path = out / "predictions.jsonl"
    asked = (f"{scenes}|{split}|{max_scenes}|{seed}|{'no-audio' if no_audio else 'audio'}|"
             f"{'train' if train_templates else split}-templates")  # which questions, about what
    key = (f"{path.resolve()}|{asked}" + (f"|coda:{coda[0]}:{coda[1]}" if coda else "")
           + ("|guided-choice" if guided_choice else ""))
    # a baseline of other questions is refused before any answering
    base_ok = _read_baseline(Path(baseline), questions, asked) if baseline is not None else None
    done: dict[int, str] = {}
    kept: list[str] = []  # the whole lines of a run that stopped: kept, the rest redone
    if pred_path.is_file():
        lines = pred_path.read_text(encoding="utf-8", errors="replace").splitlines()
        try:
            same = bool(lines) and json.loads(lines[0]).get("key") == key
        except (json.JSONDecodeError, AttributeError):
            same = False  # not ours, or cut: start over
        if same:
            for line in lines[1:]:
                try:
                    r = json.loads(line)
                except json.JSONDecodeError:
                    break  # a line cut by a kill: redo from there
                done[r["i"]] = r["prediction"]
                kept.append(line)
    write_text_atomic(pred_path, "".join(x + "\n" for x in [json.dumps({"key": key}), *kept]))
    todo = [i for i in range(len(questions)) if i not in done]
    progress = Progress(len(questions), f"eval aha {split}", "q", every=500)
    started = time.perf_counter()
    with open(pred_path, "a", encoding="utf-8") as f:
        for k in range(0, len(todo), 256):
            idx = todo[k:k + 256]
            for i, p in zip(idx, predict(idx)):
                done[i] = p
                f.write(json.dumps({"i": i, **questions[i].to_json(), "prediction": p,
                                    "correct": qa.is_correct(questions[i], p)}, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
            progress(len(done), len(questions))
    progress.close()
    preds = [done[i] for i in range(len(questions))]
    table = accuracy_table(questions, preds)
    caps = [(q, p) for q, p in zip(questions, preds) if q.kind == qa.CAPTION]
    captions = caption_scores([q.answer for q, _ in caps], [p for _, p in caps], manifest["classes"]) if caps else None
    scores = {**{k: v["accuracy"] for k, v in table.items()}, "table": table, "captions": captions,
              "model": str(path), "scenes": scenes, "split": split, "questions": len(questions), "no_audio": no_audio,
              "templates": "train" if train_templates else split, "guided_choice": guided_choice,
              "scenes_evaluated": len(scene_list), "coda": coda_info,
              # the answering time of this run (a resumed one: of what it answered)
              "answered_here": len(todo), "answer_seconds": round(time.perf_counter() - started, 2)}
    md_tail = ""
    if base_ok is not None:
        cmp = compare(questions, [qa.is_correct(q, p) for q, p in zip(questions, preds)], base_ok)
        scores["vs_baseline"] = {"baseline": str(baseline), "table": cmp}
        md_tail = _comparison_markdown(cmp, Path(baseline))
    write_json_atomic(out / "scores.json", scores)
    what = (f"{path} ({split} split, {scores['templates']} question templates"
            f"{', encoder states zeroed' if no_audio else ''}{', guided choice among options' if guided_choice else ''})")
    write_text_atomic(out / "scores.md", _markdown(table, captions, what) + md_tail)
    _plot(table, out / "scores.png", f"AHA-Eval ({split}, {len(scene_list)} scenes): {path.name}")
    return scores


class LoadedLalm:
    """A LALM directory (or a Qwen2-Audio one) loaded once, answering one question at a time
    (``interpres ask``, ``interpres serve``'s chat completions)."""

    def __init__(self, model_dir: str | Path | None):
        from audio_align.hf_audio import HFAudioLM, is_hf_audio_dir

        self.path = resolve_model(model_dir)
        self.hf = HFAudioLM(self.path) if is_hf_audio_dir(self.path) else None
        if self.hf is None:
            self.model, self.tok, _ = load_lalm_dir(self.path)
            self.frontend = AudioFrontEnd.of(self.model.cfg, ear=self.model.ear)
            self.max_seconds = self.frontend.max_seconds
        else:
            self.max_seconds = 30.0  # Whisper's window, which Qwen2-Audio's processor pads to

    def ask(self, audio: np.ndarray, question: str, max_new_tokens: int = 64,
            choices: Sequence[str] | None = None) -> tuple[str, int, int, bool]:
        """(answer, prompt tokens, answer tokens, whether it ended before ``max_new_tokens``).
        ``choices``: the answer is one of them, the one the model is likeliest to give (:func:`choose`)."""
        if not question.strip():
            raise LalmError("the question is empty")
        if choices is not None and self.hf is not None:
            raise LalmError(f"{self.path}: guided choice is for LALM directories, not Qwen2-Audio ones")
        if self.hf is not None:
            text = self.hf.answer([audio], [question], max_new_tokens=max_new_tokens)[0]
            n = len(self.hf.processor.tokenizer(text)["input_ids"])
            return text, len(self.hf.processor.tokenizer(self.hf.prompt(question))["input_ids"]), n, n < max_new_tokens
        states = self.frontend([audio])
        prompt = self.tok.prompt(question, self.model.cfg.audio_tokens(len(states[0])))
        if choices is not None:
            text = choose(self.model, self.tok, states, [question], [list(choices)])[0]
            return text, len(prompt), len(self.tok.tok.encode(text)) + 1, True
        ids = self.model.generate([prompt], states[0][None].float(), torch.tensor([len(states[0])]),
                                  self.tok.im_end, max_new_tokens)[0]
        return self.tok.decode(ids), len(prompt), len(ids), len(ids) < max_new_tokens


def ask(model_dir: str | Path | None, audio: np.ndarray, question: str, max_new_tokens: int = 64,
        choices: Sequence[str] | None = None) -> str:
    """One answer about ``audio`` (16 kHz) from a LALM directory or a Qwen2-Audio directory
    (``choices``: one of them, see :meth:`LoadedLalm.ask`)."""
    return LoadedLalm(model_dir).ask(audio, question, max_new_tokens, choices)[0]
