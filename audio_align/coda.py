"""CoDA at inference: amplify what the audio says in the heads that listen to it (issue 25).

Training-free: in a few chosen attention heads of the LM, the value states of the audio
positions are multiplied by ``scale`` while the prompt is read (the KV cache keeps them so
for the whole answer). The heads are chosen on dev scenes by how much attention they pay
to the audio when the first answer token is decided (:func:`audio_attention`); Qwen2's
grouped-query attention shares a value head among ``heads / kv_heads`` query heads, so a
KV head is ranked by the mean of its query heads.

    heads = select_heads(model, tok, dev_states, dev_questions, top_k=2)
    with amplified(model, heads, scale=1.5):
        answers = answer(model, tok, states, questions)
"""

from __future__ import annotations

import contextlib
from typing import Iterator, Sequence

import torch
from torch import Tensor

from audio_align.lalm import AudioLanguageModel, ChatTokenizer, pad_audio


def _audio_mask(model: AudioLanguageModel, input_ids: Tensor) -> Tensor:
    """(B, prefix + L) True at the audio placeholders."""
    mask = input_ids == model.audio_id
    if model.cfg.prefix_tokens:
        mask = torch.cat([torch.zeros_like(mask[:, : model.cfg.prefix_tokens]), mask], 1)
    return mask


@torch.no_grad()
def audio_attention(model: AudioLanguageModel, tok: ChatTokenizer, states: Sequence[Tensor], questions: Sequence[str],
                    batch: int = 16) -> Tensor:
    """(layers, heads): the mean share of attention that the last prompt position (where the
    first answer token is decided) pays to the audio positions, per query head."""
    model.eval()
    lm = model.lm
    old = lm.config._attn_implementation
    lm.config._attn_implementation = "eager"  # the only kind that returns its weights
    total = torch.zeros(model.cfg.layers, model.cfg.heads)
    try:
        for k in range(0, len(questions), batch):
            idx = list(range(k, min(len(questions), k + batch)))
            prompts = [tok.prompt(questions[i], model.cfg.audio_tokens(len(states[i]))) for i in idx]
            width = max(len(p) for p in prompts)
            ids = torch.zeros((len(idx), width), dtype=torch.long)
            mask = torch.zeros_like(ids)
            for r, p in enumerate(prompts):  # left-padded: the last position is every row's last prompt token
                ids[r, width - len(p):] = torch.tensor(p)
                mask[r, width - len(p):] = 1
            audio, lens = pad_audio([states[i].float() for i in idx])
            emb, full_mask = model._prefixed(model.embed(ids, audio, lens), mask)
            positions = (full_mask.cumsum(1) - 1).clamp(min=0)
            out = lm(inputs_embeds=emb, attention_mask=full_mask, position_ids=positions, output_attentions=True,
                     use_cache=False)
            is_audio = _audio_mask(model, ids).float()  # (B, L)
            for layer, att in enumerate(out.attentions):  # (B, heads, L, L)
                total[layer] += (att[:, :, -1, :] * is_audio[:, None, :]).sum(-1).sum(0)
    finally:
        lm.config._attn_implementation = old
    return total / max(1, len(questions))


def select_heads(model: AudioLanguageModel, tok: ChatTokenizer, states: Sequence[Tensor], questions: Sequence[str],
                 top_k: int = 2) -> list[tuple[int, int]]:
    """The ``top_k`` (layer, kv_head) pairs whose query heads attend most to the audio."""
    share = audio_attention(model, tok, states, questions)
    group = model.cfg.heads // model.cfg.kv_heads
    kv = share.view(model.cfg.layers, model.cfg.kv_heads, group).mean(-1)
    order = torch.argsort(kv.flatten(), descending=True)[:top_k]
    return [(int(i) // model.cfg.kv_heads, int(i) % model.cfg.kv_heads) for i in order]


@contextlib.contextmanager
def amplified(model: AudioLanguageModel, heads: Sequence[tuple[int, int]], scale: float) -> Iterator[None]:
    """Within the block, every forward pass of ``model`` multiplies the value states of the
    audio positions by ``scale`` in the given (layer, kv_head) heads."""
    head_dim = model.cfg.hidden_size // model.cfg.heads
    state: dict[str, Tensor | None] = {"mask": None}
    layers = model.lm.model.layers

    def hook_for(kv_heads: list[int]):
        def hook(module: torch.nn.Module, args: tuple, out: Tensor) -> Tensor:
            mask = state["mask"]
            if mask is None or out.shape[1] != mask.shape[1]:  # a decoding step: no audio in it
                return out
            gain = torch.ones(out.shape[-1], dtype=out.dtype, device=out.device)
            for h in kv_heads:
                gain[h * head_dim:(h + 1) * head_dim] = scale
            return torch.where(mask[..., None].to(out.device), out * gain, out)
        return hook

    by_layer: dict[int, list[int]] = {}
    for layer, h in heads:
        if not (0 <= layer < len(layers) and 0 <= h < model.cfg.kv_heads):
            raise ValueError(f"CoDA head ({layer}, {h}) is not in a model of {len(layers)} layers and "
                             f"{model.cfg.kv_heads} KV heads")
        by_layer.setdefault(layer, []).append(h)
    handles: list = [_EmbedHook(model, state)]  # embed() sees the ids, in forward() and generate() alike
    handles += [layers[layer].self_attn.v_proj.register_forward_hook(hook_for(hs)) for layer, hs in by_layer.items()]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _EmbedHook:
    """Record the audio mask whenever ``model.embed`` splices audio (generate() calls the LM directly)."""

    def __init__(self, model: AudioLanguageModel, state: dict):
        self.model, self.state = model, state
        self.original = model.embed

        def embed(input_ids: Tensor, audio: Tensor, audio_lens: Tensor) -> Tensor:
            state["mask"] = _audio_mask(model, input_ids)
            return self.original(input_ids, audio, audio_lens)

        model.embed = embed  # type: ignore[method-assign]

    def remove(self) -> None:
        del self.model.embed  # back to the class's method
