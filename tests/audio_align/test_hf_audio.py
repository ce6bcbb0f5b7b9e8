"""A Qwen2-Audio directory the user already has: loaded offline by path, answering through
``interpres ask`` like the project's LALM (a tiny random config saved with save_pretrained)."""

from __future__ import annotations

import numpy as np
import pytest

from audio_align.evaluate import ask
from audio_align.hf_audio import HFAudioLM, is_hf_audio_dir
from audio_align.lalm import LalmError

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|AUDIO|>", "<|audio_bos|>", "<|audio_eos|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{% if m['content'] is string %}{{ m['content'] }}"
    "{% else %}{% for c in m['content'] %}{% if c['type'] == 'audio' %}Audio: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% else %}{{ c['text'] }}{% endif %}{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


@pytest.fixture(scope="module")
def qwen2_audio_dir(tmp_path_factory):
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import (PreTrainedTokenizerFast, Qwen2AudioConfig, Qwen2AudioForConditionalGeneration,
                              Qwen2AudioProcessor, WhisperFeatureExtractor)

    out = tmp_path_factory.mktemp("qwen2-audio")
    chars = list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ?.,!'\n:-_|<>")
    vocab = {c: i for i, c in enumerate(SPECIALS + chars)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<|endoftext|>"))
    tk.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tk.decoder = decoders.Fuse()
    tk.add_special_tokens(SPECIALS)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    processor = Qwen2AudioProcessor(feature_extractor=WhisperFeatureExtractor(feature_size=16), tokenizer=tokenizer,
                                    chat_template=CHAT_TEMPLATE)
    torch.manual_seed(0)
    config = Qwen2AudioConfig(
        audio_config=dict(num_mel_bins=16, encoder_layers=1, encoder_attention_heads=2, encoder_ffn_dim=32,
                          d_model=16, max_source_positions=1500),
        text_config=dict(vocab_size=len(vocab), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, model_type="qwen2"),
        audio_token_index=vocab["<|AUDIO|>"])
    Qwen2AudioForConditionalGeneration(config).save_pretrained(out)
    processor.save_pretrained(out)
    return out


def test_a_qwen2_audio_directory_answers_offline(qwen2_audio_dir):
    assert is_hf_audio_dir(qwen2_audio_dir)
    rng = np.random.default_rng(0)
    waves = [0.1 * rng.standard_normal(16000 * 3).astype(np.float32),
             0.1 * rng.standard_normal(16000 * 5).astype(np.float32)]
    lm = HFAudioLM(qwen2_audio_dir)
    both = lm.answer(waves, ["Is there a bell?", "What was the first sound?"], max_new_tokens=6)
    alone = [lm.answer([w], [q], max_new_tokens=6)[0] for w, q in zip(waves, ["Is there a bell?", "What was the first sound?"])]
    assert both == alone and all(isinstance(a, str) for a in both)
    assert ask(qwen2_audio_dir, waves[0], "Is there a bell?", max_new_tokens=6) == both[0]


def test_not_a_model_directory(tmp_path):
    assert not is_hf_audio_dir(tmp_path)
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_audio"}')
    with pytest.raises(LalmError, match="not a loadable Qwen2-Audio directory"):
        HFAudioLM(tmp_path)
