"""Tiny real fixtures for simul/: a stream corpus from a word grammar, a tiny translator
trained by the real recipe, and a tiny boundary detector."""

from __future__ import annotations

import random
import shutil
from pathlib import Path

from simul.data import Document, write_documents

# a small lexicon: Chinese words and their English, so the mapping is learnable
LEXICON = {
    "打开": "open", "保存": "save", "删除": "delete", "文件": "file", "目录": "directory",
    "设备": "device", "网络": "network", "错误": "error", "无法": "cannot", "找到": "find",
    "新建": "new", "窗口": "window", "图像": "image", "颜色": "color", "选择": "select",
    "全部": "all", "编译器": "compiler", "链接": "link", "符号": "symbol", "段": "section",
}
GENERAL = ["打开", "保存", "删除", "文件", "目录", "设备", "网络", "新建", "窗口", "图像", "颜色", "选择", "全部"]
DOMAIN = ["编译器", "链接", "符号", "段", "错误", "无法", "找到"]
ENDINGS = {"失败": "failed", "完成": "done"}  # every sentence ends with one: a learnable boundary


def sentence(rng: random.Random, words: list[str]) -> tuple[str, str]:
    picked = [rng.choice(words) for _ in range(rng.randint(1, 3))]
    end = rng.choice(sorted(ENDINGS))
    zh = "".join(picked) + end
    en = " ".join(LEXICON[w] for w in picked) + " " + ENDINGS[end]
    return zh, en.capitalize()


def documents(n: int, words: list[str], seed: int, prefix: str) -> list[Document]:
    rng = random.Random(seed)
    docs = []
    for i in range(n):
        pairs = [sentence(rng, words) for _ in range(rng.randint(3, 5))]
        docs.append(Document(f"{prefix}#{i}", prefix, [z for z, _ in pairs], [e for _, e in pairs]))
    return docs


def write_stream_corpus(root: Path, sizes: dict[str, int] | None = None) -> Path:
    """``root/{general,domain}/{train,dev,test}.jsonl`` from the grammar."""
    sizes = sizes or {"train": 300, "dev": 20, "test": 12}
    for part, words, seed in (("general", GENERAL, 1), ("domain", DOMAIN, 2)):
        for k, (split, n) in enumerate(sizes.items()):
            write_documents(root / part / f"{split}.jsonl", documents(n, words, seed * 10 + k, f"{part}/{split}"))
    return root


def train_tiny_translator(corpus: Path, out: Path, *overrides: str) -> Path:
    """The real pretraining stage on the tiny preset: a model directory in ``out/model``."""
    from speech.config import load_config
    from simul.train import SimulTrainConfig, train

    root = Path(__file__).resolve().parents[2]
    cfg = load_config(SimulTrainConfig, root / "simul/configs/tiny.yaml",
                      [f"corpus={corpus}", f"out={out}", "threads=1", *overrides])
    return train(cfg)


def train_tiny_segmenter(corpus: Path, out: Path):
    from simul.data import load_split
    from simul.segmenter import SegmenterConfig, train_segmenter

    streams = [d.zh for d in load_split(str(corpus), "general", "train")]
    seg = train_segmenter(streams, SegmenterConfig(dim=16, hidden=32, epochs=3, vocab_size=200))
    seg.save(out)
    return seg


def bundle_like(model_dir: Path, segmenter_dir: Path, out: Path, threshold: float = 0.5) -> Path:
    """A model directory laid out like the bundled one: the segmenter inside, a policy block."""
    import json

    shutil.copytree(model_dir, out)
    shutil.copytree(segmenter_dir, out / "segmenter")
    conf = json.loads((out / "config.json").read_text())
    conf["policy"] = {"threshold": threshold, "max_len": 40}
    (out / "config.json").write_text(json.dumps(conf))
    return out
