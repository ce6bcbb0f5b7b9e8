"""A Qwen2-Audio model directory the user already has, answering like the project's LALM.

``interpres ask`` and ``interpres eval aha`` take such a directory with ``--model``: a
``config.json`` whose ``model_type`` is ``qwen2_audio`` beside the processor files
(``preprocessor_config.json``/``processor_config.json``, the tokenizer, the chat template), as
``save_pretrained`` writes them. It is loaded offline (``local_files_only``): nothing is
fetched. The model's own processor makes the features and the prompt, and decoding is greedy.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from audio_align.lalm import LalmError
from speech.audio import SAMPLE_RATE

log = logging.getLogger(__name__)

MODEL_TYPES = ("qwen2_audio",)


def is_hf_audio_dir(path: str | Path) -> bool:
    """Whether ``path`` holds a transformers audio-language model this module loads."""
    cfg = Path(path) / "config.json"
    if not cfg.is_file():
        return False
    try:
        return json.loads(cfg.read_text()).get("model_type") in MODEL_TYPES
    except (json.JSONDecodeError, AttributeError):
        return False


class HFAudioLM:
    """A Qwen2-Audio directory: ``answer(waves, questions)`` -> one greedy answer each."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu"):
        from transformers import AutoProcessor, Qwen2AudioForConditionalGeneration

        self.path = Path(path)
        try:
            self.processor = AutoProcessor.from_pretrained(self.path, local_files_only=True)
            self.model = Qwen2AudioForConditionalGeneration.from_pretrained(self.path, local_files_only=True)
        except (OSError, ValueError) as e:
            raise LalmError(f"{self.path}: not a loadable Qwen2-Audio directory ({e})") from None
        self.model.to(device).eval()

    def prompt(self, question: str) -> str:
        conv = [{"role": "user", "content": [{"type": "audio"}, {"type": "text", "text": question}]}]
        return self.processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False)

    @torch.no_grad()
    def answer(self, waves: Sequence[np.ndarray], questions: Sequence[str], max_new_tokens: int = 48,
               batch: int = 8) -> list[str]:
        out: list[str] = []
        tok = self.processor.tokenizer
        tok.padding_side = "left"  # greedy continuation of every row from its own end
        for k in range(0, len(questions), batch):
            texts = [self.prompt(q) for q in questions[k:k + batch]]
            inputs = self.processor(text=texts, audio=[np.asarray(w, dtype=np.float32) for w in waves[k:k + batch]],
                                    sampling_rate=SAMPLE_RATE, return_tensors="pt", padding=True)
            inputs = inputs.to(self.model.device)
            gen = self.model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
            out += [t.strip() for t in self.processor.batch_decode(gen[:, inputs["input_ids"].shape[1]:],
                                                                   skip_special_tokens=True)]
        return out
