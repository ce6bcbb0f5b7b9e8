"""The training losses of the speech-to-text model: label-smoothed cross-entropy (fairseq's
``label_smoothed_cross_entropy``) and CTC on the encoder (blank = the pad id)."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from speech.model_config import PAD_ID


def label_smoothed_nll_loss(logits: Tensor, target: Tensor, epsilon: float = 0.1,
                            ignore_index: int = PAD_ID) -> tuple[Tensor, Tensor]:
    """fairseq's label-smoothed cross entropy, summed over the non-pad targets.

    logits (B, U, V), target (B, U) -> (loss, nll_loss), both scalar sums in float32;
    divide by the number of target tokens for a per-token loss.
    """
    lprobs = F.log_softmax(logits.float(), dim=-1)
    target = target.unsqueeze(-1)
    nll = -lprobs.gather(-1, target).squeeze(-1)
    smooth = -lprobs.sum(-1)
    keep = target.squeeze(-1) != ignore_index
    nll = nll.masked_fill(~keep, 0.0).sum()
    smooth = smooth.masked_fill(~keep, 0.0).sum()
    eps_i = epsilon / (lprobs.shape[-1] - 1)
    loss = (1.0 - epsilon - eps_i) * nll + eps_i * smooth
    return loss, nll


def ctc_loss(ctc_logits: Tensor, enc_lens: Tensor, targets: Tensor, target_lens: Tensor,
             blank: int = PAD_ID) -> Tensor:
    """CTC summed over the batch. ctc_logits (B, T', V), enc_lens (B,), targets (B, S)
    padded, target_lens (B,) -> scalar float32. Impossible alignments count as 0."""
    lprobs = F.log_softmax(ctc_logits.float(), dim=-1).transpose(0, 1)  # (T', B, V)
    return F.ctc_loss(lprobs, targets, enc_lens, target_lens, blank=blank, reduction="sum",
                      zero_infinity=True)
