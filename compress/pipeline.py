"""``interpres compress CONFIG``: distill -> prune -> re-distill -> quantize, then a report.

The order is the industrial one (e.g. Minitron, Sreenivas et al. 2024): distill the teacher
(or an ensemble) into a student of the same shape, prune the student structurally,
recover the pruned model by distilling again from the unpruned teacher, and quantize the
result for the CPU runtime. Every stage writes a model directory under ``OUT/`` and is
skipped when it exists, and the training stages resume after a kill (they run the model
family's own training loop), so rerunning the command continues where it stopped.

The pipeline knows no model family. A family is a class named in the config
(``family: speech.compressing:SpeechFamily``) with the methods of :class:`Family`; compress
calls them and does the rest: scoring and removing structure (:mod:`compress.prune`), the
KD losses (:mod:`compress.distill`, which the families' training loops call), the timing
and the report (:mod:`compress.report`).
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from compress.family import CompressError, Family, load_family
from compress.files import write_json_atomic
from compress.prune import PruneConfig, count_params, prune
from compress.report import rounds_setting

log = logging.getLogger(__name__)


@dataclass
class CompressConfig:
    """A compression recipe (compress/configs/*.yaml)."""

    family: str = "speech.compressing:SpeechFamily"
    teacher: list[str] = field(default_factory=list)  # model directories; several = an ensemble
    out: str = "runs/compress"
    options: dict[str, Any] = field(default_factory=dict)  # the family's constructor arguments
    distill: dict[str, Any] | None = None  # stage 1: family.distill settings; None skips it
    prune: dict[str, Any] | None = None  # stage 2: PruneConfig fields
    redistill: dict[str, Any] | None = None  # stage 3: family.distill settings
    # between 3 and 4: family.trim settings (the decoder's vocabulary cut to the pieces the
    # student's languages use); None skips it
    trim: dict[str, Any] | None = None
    quantize: dict[str, Any] | None = None  # stage 4: family.quantize settings
    # variants of the re-distillation with other KD settings, measured beside the main line
    # (selective KD: e.g. {"truncate-75": {"kd": {"truncate": 0.75}}})
    studies: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the quantized student measured again with other decoding settings, each its own variant
    # ("student int8 greedy"); the family's open() reads them from the variant's "decode"
    # (speech: {greedy: {beam: 1}}, the decoding a sequence-level KD student is made for)
    decodings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # the same for the quantized teacher ("teacher int8 greedy"): what quantization and a cheaper
    # search alone give, beside what the student adds
    teacher_decodings: dict[str, dict[str, Any]] = field(default_factory=dict)
    # settings for test_items and timing (threads, batch, rounds: interleaved timing rounds)
    report: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.teacher:
            raise CompressError("teacher: at least one model directory is needed")
        for key in ("decodings", "teacher_decodings"):
            for name, decode in getattr(self, key).items():
                if not isinstance(decode, dict) or not decode:
                    raise CompressError(f"{key}.{name}: give the decoding settings as a mapping, e.g. {{beam: 1}}")
            if getattr(self, key) and self.quantize is None:
                which = "student" if key == "decodings" else "teacher"
                raise CompressError(f"{key}: they apply to the quantized {which}; the config has no quantize stage")
        try:
            rounds_setting(self.report)
        except ValueError as e:
            raise CompressError(str(e)) from e
        if self.prune is not None:
            try:
                PruneConfig(**self.prune)
            except (TypeError, ValueError) as e:
                raise CompressError(f"prune: {e}") from e


def _done(model_dir: Path) -> bool:
    return (model_dir / "config.json").is_file()


def run_pipeline(cfg: CompressConfig) -> dict[str, Any]:
    """Run (or resume) every stage, then measure every variant and write the report."""
    from compress.report import bootstrap_intervals, measure_all, write_report  # noqa: PLC0415 - matplotlib is slow to import

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    family = load_family(cfg.family, cfg.options)
    if cfg.trim is not None and not hasattr(family, "trim"):
        raise CompressError(f"trim: the family {cfg.family} cannot trim a vocabulary")
    teachers = [Path(t) for t in cfg.teacher]
    for t in teachers:
        if not _done(t):
            raise CompressError(f"teacher: {t} is not a model directory (no config.json)")
    write_json_atomic(out / "recipe.json", asdict(cfg))
    variants: list[dict[str, Any]] = [{"name": "teacher", "path": str(teachers[0]), "runtime": "torch",
                                       "stage": "teacher"}]
    current = teachers[0]

    if cfg.distill is not None:
        log.info("stage 1/4: distill %s into a student of its size", ", ".join(map(str, teachers)))
        current = family.distill(current, teachers, cfg.distill, out / "1-distill")
        variants.append({"name": "distilled", "path": str(current), "runtime": "torch", "stage": "distill"})

    if cfg.prune is not None:
        pcfg = PruneConfig(**cfg.prune)
        pruned = out / "2-prune" / "model"
        if not _done(pruned):
            log.info("stage 2/4: prune %s (%s)", current, cfg.prune)
            model = family.load(current)
            batches = family.calibration(current, pcfg.calibration_batches) if pcfg.importance == "taylor" else ()
            result = prune(model, pcfg, batches, family.loss)
            family.save(model, current, pruned, {"pruned_from": str(current), "prune": cfg.prune,
                                                 "prune_result": result.summary()})
            log.info("pruned: %d -> %d parameters", result.params_before, result.params_after)
        current = pruned
        variants.append({"name": "pruned", "path": str(current), "runtime": "torch", "stage": "prune"})

    redistilled = current
    if cfg.redistill is not None:
        log.info("stage 3/4: re-distill the pruned model from %s", ", ".join(map(str, teachers)))
        redistilled = family.distill(current, teachers, cfg.redistill, out / "3-redistill")
        variants.append({"name": "re-distilled", "path": str(redistilled), "runtime": "torch", "stage": "redistill"})
        for name, settings in cfg.studies.items():
            merged = {**cfg.redistill, **settings, "kd": {**cfg.redistill.get("kd", {}), **settings.get("kd", {})}}
            log.info("study %s: re-distill with %s", name, settings)
            path = family.distill(current, teachers, merged, out / f"study-{name}")
            variants.append({"name": f"study {name}", "path": str(path), "runtime": "torch", "stage": "study"})

    if cfg.trim is not None:
        trimmed = out / "3-trim" / "model"
        if not _done(trimmed):
            log.info("stage 3/4: trim the vocabulary of %s (%s)", redistilled, cfg.trim)
            family.trim(redistilled, trimmed, cfg.trim)
        redistilled = trimmed
        variants.append({"name": "trimmed", "path": str(redistilled), "runtime": "torch", "stage": "trim"})

    if cfg.quantize is not None:
        log.info("stage 4/4: quantize (%s)", cfg.quantize)
        # runtime: one ("teacher int8", "student int8"), or a list measured side by side
        # ("teacher torch-int8", "student torch-int8", "teacher onnx-int8", ...)
        runtimes = cfg.quantize.get("runtime")
        several = isinstance(runtimes, list)
        for runtime in runtimes if several else [runtimes]:
            settings = {**cfg.quantize, "runtime": runtime} if several else cfg.quantize
            for name, source in (("teacher", teachers[0]), ("student", redistilled)):
                folder = out / "4-quantize" / (f"{name}-{runtime}" if several else name)
                label = f"{name} {runtime}" if several else f"{name} int8"
                variants.append({"name": label, **family.quantize(source, folder, settings), "stage": "quantize"})
                for dname, decode in (cfg.decodings if name == "student" else cfg.teacher_decodings).items():
                    variants.append({**variants[-1], "name": f"{label} {dname}", "decode": dict(decode)})

    for v in variants:
        v["params"] = _params(family, v)
        if v["stage"] in ("distill", "redistill", "study"):  # the training cost of the stage
            conf = json.loads((Path(v["path"]) / "config.json").read_text(encoding="utf-8"))
            v["train_seconds"], v["updates"] = conf.get("train_seconds"), conf.get("updates")
    results = measure_all(cfg, variants, out / "report")
    items = family.test_items({k: v for k, v in cfg.report.items() if k != "rounds"})
    report = write_report(cfg, results, out / "report", family.quality, bootstrap_intervals(family, items, results))
    return report


def _params(family: Family, variant: dict[str, Any]) -> int:
    return count_params(family.load(Path(variant["path"])))
