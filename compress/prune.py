"""Structured pruning: whole attention heads, FFN channels and layers, physically removed.

The model is any nn.Module; the pruner finds what it can prune by shape, not by family:

- an *attention* is a module with ``q_proj``, ``k_proj``, ``v_proj``, ``out_proj``
  (nn.Linear) and integer ``heads`` and ``head_dim`` attributes that its forward reads;
  head ``h`` is rows ``h*head_dim:(h+1)*head_dim`` of q/k/v and the same columns of out;
- a *feed-forward block* is a module with ``fc1`` and ``fc2`` (nn.Linear); channel ``c``
  is row ``c`` of fc1 and column ``c`` of fc2;
- a *GLU conv stack* (the speech encoder's subsampler) is a module with a ``conv_layers``
  nn.ModuleList of two or more nn.Conv1d, each followed by a GLU over the channels;
  channel ``c`` of an inner layer ``i`` (every layer but the last, whose output is the
  model width) is output rows ``c`` and ``c + h`` of conv ``i`` (the value and its gate,
  ``h`` = half its outputs) and input channel ``c`` of conv ``i + 1``;
- a *layer stack* is an nn.ModuleList of residual blocks named in
  :attr:`PruneConfig.layers` (e.g. ``encoder.layers``); dropping a pre-LayerNorm residual
  block leaves the identity, so the stack still runs. A stack's value is how many layers
  stay (the best-scored ones) or which (a list of indices: ``decoder.layers: [0, 5]``
  keeps the first and the last, maximally spaced, as Distil-Whisper cuts its decoder;
  Gandhi et al. 2023).

Pruned linears are replaced by smaller ones (fewer parameters, fewer FLOPs, a smaller
file) and ``heads`` is updated; the model family then writes a config from the module
shapes (``speech.model.layout_of``), so the result loads from its own config.

Importance (``PruneConfig.importance``):

- ``magnitude``: the L2 norm of a group's weights (a head: its q/k/v rows and out
  columns; a channel: its fc1 row and fc2 column; a GLU channel: its two output rows and
  the next conv's input channel; a layer: the mean absolute weight of
  its linears: a weak signal for layers, which is why ``taylor`` is the default);
- ``taylor``: the first-order Taylor estimate of the loss change when the group is
  zeroed, ``|sum_group w * dL/dw|``, summed over calibration batches (Molchanov et al.
  2019), computed from the label loss the caller passes in.

Within each attention / FFN / inner conv the lowest-scored heads / channels go; at least
one head and one channel stay. Layers are ranked within their stack. ``heads``, ``ffn``
and ``conv`` are either one fraction for every module of the kind or a mapping from module
paths to fractions (``ffn: {encoder: 0.5, decoder: 0.75}``): a module takes the value of
the longest path that is its own name or a dotted prefix of it (names as in the unpruned
model), and a module that no path names is kept whole. A path that names no module of its
kind is an error, so a typo cannot pass for "keep everything".
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn

IMPORTANCES = ("taylor", "magnitude")


Fraction = float | dict[str, float]  # one for all modules, or module path -> fraction


def _covers(path: str, name: str) -> bool:
    """Whether ``path`` is the module ``name`` or a dotted prefix of it."""
    return name == path or name.startswith(f"{path}.")


def fraction_for(spec: Fraction, name: str) -> float:
    """The fraction ``spec`` gives the module ``name``: a number for every module, or the
    value of the longest path in the mapping that is ``name`` or a dotted prefix of it
    (1.0, keep all, when none is)."""
    if not isinstance(spec, dict):
        return float(spec)
    paths = [p for p in spec if _covers(p, name)]
    return float(spec[max(paths, key=len)]) if paths else 1.0


def _check_fraction(field_name: str, spec: Any) -> None:
    items = spec.items() if isinstance(spec, dict) else [(None, spec)]
    for path, value in items:
        where = field_name if path is None else f"{field_name}.{path}"
        if path is not None and (not isinstance(path, str) or not path):
            raise ValueError(f"prune: '{field_name}' maps module paths to fractions; {path!r} is not a module path")
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
            raise ValueError(f"prune: '{where}' is the fraction kept, in (0, 1], got {value!r}")


def _unmatched(field_name: str, spec: Fraction, names: Iterable[str], kind: str) -> None:
    """Raise for a path in ``spec`` that names none of the modules ``names``."""
    if not isinstance(spec, dict):
        return
    names = list(names)
    for path in spec:
        if not any(_covers(path, n) for n in names):
            listed = ", ".join(names[:6]) + (", ..." if len(names) > 6 else "")
            raise ValueError(f"prune: '{field_name}.{path}' names no {kind} (the model's: {listed or 'none'})")


def _wants(spec: Fraction) -> bool:
    """Whether ``spec`` prunes anything."""
    return any(v < 1.0 for v in (spec.values() if isinstance(spec, dict) else [spec]))


@dataclass
class PruneConfig:
    importance: str = "taylor"
    heads: Fraction = 1.0  # fraction of the heads of each attention kept
    ffn: Fraction = 1.0  # fraction of the channels of each feed-forward block kept
    conv: Fraction = 1.0  # fraction of the GLU channels of each inner conv of a GLU conv stack kept
    # ModuleList path -> how many layers stay (the best-scored) or which (a list of indices)
    layers: dict[str, int | list[int]] = field(default_factory=dict)
    calibration_batches: int = 8  # taylor: batches the scores are summed over

    def __post_init__(self) -> None:
        if self.importance not in IMPORTANCES:
            raise ValueError(f"prune: 'importance' must be one of {', '.join(IMPORTANCES)}, got '{self.importance}'")
        for name in ("heads", "ffn", "conv"):
            _check_fraction(name, getattr(self, name))
        for path, n in self.layers.items():
            if isinstance(n, list):
                if not n or not all(isinstance(i, int) and not isinstance(i, bool) and i >= 0 for i in n) \
                        or len(set(n)) != len(n):
                    raise ValueError(f"prune: 'layers.{path}' lists the layers kept: distinct indices >= 0, "
                                     f"at least one, got {n!r}")
            elif not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise ValueError(f"prune: 'layers.{path}' must be a number of layers kept (at least 1) "
                                 f"or a list of their indices, got {n!r}")
        if self.calibration_batches < 1:
            raise ValueError("prune: 'calibration_batches' must be at least 1")


def _is_linear(m: Any) -> bool:
    return isinstance(m, nn.Linear)


def find_attentions(model: nn.Module) -> dict[str, nn.Module]:
    """name -> module for every prunable attention (see the module docstring)."""
    return {name: m for name, m in model.named_modules()
            if all(_is_linear(getattr(m, p, None)) for p in ("q_proj", "k_proj", "v_proj", "out_proj"))
            and isinstance(getattr(m, "heads", None), int) and isinstance(getattr(m, "head_dim", None), int)}


def find_ffns(model: nn.Module) -> dict[str, nn.Module]:
    """name -> module for every feed-forward block with fc1/fc2 linears."""
    return {name: m for name, m in model.named_modules() if _is_linear(getattr(m, "fc1", None))
            and _is_linear(getattr(m, "fc2", None))}


def find_glu_convs(model: nn.Module) -> dict[str, nn.Module]:
    """name -> module for every GLU conv stack: a ``conv_layers`` ModuleList of two or more
    ungrouped nn.Conv1d in which each inner conv has twice the next one's inputs."""
    out = {}
    for name, m in model.named_modules():
        convs = getattr(m, "conv_layers", None)
        if (isinstance(convs, nn.ModuleList) and len(convs) > 1
                and all(isinstance(c, nn.Conv1d) and c.groups == 1 for c in convs)
                and all(convs[i].out_channels == 2 * convs[i + 1].in_channels for i in range(len(convs) - 1))):
            out[name] = m
    return out


def layer_stack(model: nn.Module, path: str) -> nn.ModuleList:
    stack = model.get_submodule(path) if path else model
    if not isinstance(stack, nn.ModuleList):
        raise ValueError(f"prune: '{path}' is a {type(stack).__name__}, not an nn.ModuleList of layers")
    return stack


# --------------------------------------------------------------------------- groups


def _head_slices(attn: nn.Module) -> list[slice]:
    d = attn.head_dim
    return [slice(h * d, (h + 1) * d) for h in range(attn.heads)]


def _head_scores(attn: nn.Module, per_param: Callable[[nn.Parameter], Tensor]) -> Tensor:
    """Sum of ``per_param(p)`` over each head's rows (q/k/v weight and bias) and out columns."""
    scores = []
    for sl in _head_slices(attn):
        total = torch.zeros((), dtype=torch.float64)
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            total = total + per_param(proj.weight)[sl].sum().double()
            if proj.bias is not None:
                total = total + per_param(proj.bias)[sl].sum().double()
        total = total + per_param(attn.out_proj.weight)[:, sl].sum().double()
        scores.append(total)
    return torch.stack(scores)


def _channel_scores(ffn: nn.Module, per_param: Callable[[nn.Parameter], Tensor]) -> Tensor:
    s = per_param(ffn.fc1.weight).sum(1).double() + per_param(ffn.fc2.weight).sum(0).double()
    if ffn.fc1.bias is not None:
        s = s + per_param(ffn.fc1.bias).double()
    return s


def _glu_scores(first: nn.Conv1d, second: nn.Conv1d, per_param: Callable[[nn.Parameter], Tensor]) -> Tensor:
    """Per GLU channel c: ``per_param`` summed over rows c and c+h of ``first`` (weight and
    bias) and input channel c of ``second``."""
    h = first.out_channels // 2
    rows = per_param(first.weight).flatten(1).sum(1).double()
    if first.bias is not None:
        rows = rows + per_param(first.bias).double()
    return rows[:h] + rows[h:] + per_param(second.weight).sum((0, 2)).double()


def _glu_pairs(stack: nn.Module) -> list[tuple[str, nn.Conv1d, nn.Conv1d]]:
    convs = stack.conv_layers
    return [(f"conv_layers.{i}", convs[i], convs[i + 1]) for i in range(len(convs) - 1)]


def _layer_score(layer: nn.Module, per_param: Callable[[nn.Parameter], Tensor]) -> Tensor:
    return sum((per_param(p).sum().double() for p in layer.parameters()), torch.zeros((), dtype=torch.float64))


@dataclass
class Scores:
    heads: dict[str, Tensor]  # attention name -> (heads,)
    channels: dict[str, Tensor]  # ffn name -> (ffn_dim,)
    layers: dict[str, Tensor]  # stack path -> (layers,)
    glu: dict[str, Tensor] = field(default_factory=dict)  # "<stack>.conv_layers.<i>" -> (GLU channels,)


def magnitude_scores(model: nn.Module, cfg: PruneConfig) -> Scores:
    sq = lambda p: p.detach().float() ** 2  # noqa: E731
    heads = {n: _head_scores(m, sq).sqrt() for n, m in find_attentions(model).items()}
    channels = {n: _channel_scores(m, sq).sqrt() for n, m in find_ffns(model).items()}
    layers = {}
    for path in cfg.layers:
        per = []
        for layer in layer_stack(model, path):
            ws = [m.weight.detach().abs().mean() for m in layer.modules() if _is_linear(m)]
            per.append(torch.stack(ws).mean().double() if ws else torch.zeros((), dtype=torch.float64))
        layers[path] = torch.stack(per)
    glu = {f"{n}.{sub}": _glu_scores(a, b, sq).sqrt() for n, m in find_glu_convs(model).items()
           for sub, a, b in _glu_pairs(m)}
    return Scores(heads, channels, layers, glu)


def taylor_scores(model: nn.Module, cfg: PruneConfig, batches: Iterable[Any],
                  loss_fn: Callable[[nn.Module, Any], Tensor]) -> Scores:
    """First-order Taylor importance, ``|sum_group w * grad|`` per batch, summed over batches.

    ``loss_fn(model, batch)`` returns the scalar loss to differentiate (the label loss).
    The model is run in eval mode (no dropout); its gradients are cleared afterwards.
    """
    was_training = model.training
    model.eval()
    attns, ffns, convs = find_attentions(model), find_ffns(model), find_glu_convs(model)
    heads = {n: torch.zeros(m.heads, dtype=torch.float64) for n, m in attns.items()}
    glu = {f"{n}.{sub}": torch.zeros(a.out_channels // 2, dtype=torch.float64) for n, m in convs.items()
           for sub, a, _ in _glu_pairs(m)}
    channels = {n: torch.zeros(m.fc1.out_features, dtype=torch.float64) for n, m in ffns.items()}
    layers = {p: torch.zeros(len(layer_stack(model, p)), dtype=torch.float64) for p in cfg.layers}
    wg = lambda p: (p.detach().float() * p.grad.float()) if p.grad is not None else torch.zeros_like(p, dtype=torch.float32)  # noqa: E731
    seen = 0
    for batch in batches:
        if seen >= cfg.calibration_batches:
            break
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model, batch)
        if not torch.isfinite(loss):
            raise ValueError(f"prune: the calibration loss of batch {seen} is not finite ({float(loss)})")
        loss.backward()
        for n, m in attns.items():
            heads[n] += _head_scores(m, wg).abs()
        for n, m in ffns.items():
            channels[n] += _channel_scores(m, wg).abs()
        for n, m in convs.items():
            for sub, a, b in _glu_pairs(m):
                glu[f"{n}.{sub}"] += _glu_scores(a, b, wg).abs()
        for p in cfg.layers:
            for i, layer in enumerate(layer_stack(model, p)):
                layers[p][i] += _layer_score(layer, wg).abs()
        seen += 1
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    if not seen:
        raise ValueError("prune: taylor importance needs calibration batches, got none")
    return Scores(heads, channels, layers, glu)


# --------------------------------------------------------------------------- surgery


def _sliced(module: nn.Module, rows: Tensor | None, cols: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """The weight (rows = output units, cols = inputs) and bias of a Linear or Conv1d, sliced."""
    w = module.weight.detach()
    b = module.bias.detach() if module.bias is not None else None
    if rows is not None:
        w = w.index_select(0, rows)
        b = b.index_select(0, rows) if b is not None else None
    if cols is not None:
        w = w.index_select(1, cols)
    return w, b


def _filled(new: nn.Module, w: Tensor, b: Tensor | None) -> nn.Module:
    with torch.no_grad():
        new.weight.copy_(w)
        if b is not None:
            new.bias.copy_(b)
    return new


def _sliced_linear(lin: nn.Linear, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Linear:
    w, b = _sliced(lin, rows, cols)
    return _filled(nn.Linear(w.shape[1], w.shape[0], bias=b is not None, device=w.device, dtype=w.dtype), w, b)


def prune_heads(attn: nn.Module, keep: list[int]) -> None:
    """Keep heads ``keep`` (in this order) of one attention, in place."""
    if not keep:
        raise ValueError("prune_heads: at least one head must stay")
    if any(not 0 <= h < attn.heads for h in keep) or len(set(keep)) != len(keep):
        raise ValueError(f"prune_heads: {keep} are not distinct heads of {attn.heads}")
    d = attn.head_dim
    idx = torch.cat([torch.arange(h * d, (h + 1) * d) for h in keep]).to(attn.q_proj.weight.device)
    attn.q_proj = _sliced_linear(attn.q_proj, rows=idx)
    attn.k_proj = _sliced_linear(attn.k_proj, rows=idx)
    attn.v_proj = _sliced_linear(attn.v_proj, rows=idx)
    attn.out_proj = _sliced_linear(attn.out_proj, cols=idx)
    attn.heads = len(keep)


def prune_channels(ffn: nn.Module, keep: list[int]) -> None:
    """Keep channels ``keep`` of one feed-forward block, in place."""
    if not keep:
        raise ValueError("prune_channels: at least one channel must stay")
    idx = torch.tensor(keep, dtype=torch.long, device=ffn.fc1.weight.device)
    ffn.fc1 = _sliced_linear(ffn.fc1, rows=idx)
    ffn.fc2 = _sliced_linear(ffn.fc2, cols=idx)


def _sliced_conv(conv: nn.Conv1d, rows: Tensor | None = None, cols: Tensor | None = None) -> nn.Conv1d:
    w, b = _sliced(conv, rows, cols)
    return _filled(nn.Conv1d(w.shape[1], w.shape[0], conv.kernel_size, stride=conv.stride, padding=conv.padding,
                             dilation=conv.dilation, bias=b is not None, padding_mode=conv.padding_mode,
                             device=w.device, dtype=w.dtype), w, b)


def prune_glu_channels(stack: nn.Module, layer: int, keep: list[int]) -> None:
    """Keep GLU channels ``keep`` (in this order) of inner conv ``layer`` of a GLU conv stack,
    in place: its value and gate rows, and the next conv's input channels."""
    convs = stack.conv_layers
    if not 0 <= layer < len(convs) - 1:
        raise ValueError(f"prune_glu_channels: layer {layer} is not an inner conv of {len(convs)}")
    h = convs[layer].out_channels // 2
    if not keep:
        raise ValueError("prune_glu_channels: at least one channel must stay")
    if any(not 0 <= c < h for c in keep) or len(set(keep)) != len(keep):
        raise ValueError(f"prune_glu_channels: {keep} are not distinct channels of {h}")
    idx = torch.tensor(keep, dtype=torch.long, device=convs[layer].weight.device)
    convs[layer] = _sliced_conv(convs[layer], rows=torch.cat([idx, idx + h]))
    convs[layer + 1] = _sliced_conv(convs[layer + 1], cols=idx)


def remove_layers(stack: nn.ModuleList, keep: list[int]) -> None:
    """Keep layers ``keep`` of a stack (their order preserved), in place."""
    if not keep:
        raise ValueError("remove_layers: at least one layer must stay")
    kept = [stack[i] for i in sorted(keep)]
    while len(stack):
        del stack[len(stack) - 1]
    for layer in kept:
        stack.append(layer)


def _top(scores: Tensor, n: int) -> list[int]:
    """Indices of the ``n`` largest scores, in ascending index order (ties: lower index)."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n])


@dataclass
class PruneResult:
    params_before: int
    params_after: int
    kept_layers: dict[str, list[int]]
    kept_heads: dict[str, list[int]]
    kept_channels: dict[str, int]
    kept_glu: dict[str, int] = field(default_factory=dict)  # "<stack>.conv_layers.<i>" -> GLU channels kept

    def summary(self) -> dict[str, Any]:
        return {"params_before": self.params_before, "params_after": self.params_after,
                "params_kept": self.params_after / self.params_before, "kept_layers": self.kept_layers,
                "kept_heads": {k: len(v) for k, v in self.kept_heads.items()},
                "kept_channels": self.kept_channels, "kept_glu": self.kept_glu}


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())  # a tied weight once


def prune(model: nn.Module, cfg: PruneConfig, batches: Iterable[Any] = (),
          loss_fn: Callable[[nn.Module, Any], Tensor] | None = None) -> PruneResult:
    """Score every group on the unpruned model, then remove layers, heads and channels in place."""
    before = count_params(model)
    glus = find_glu_convs(model)
    glu_names = {id(m): n for n, m in glus.items()}  # names before layer removal
    if _wants(cfg.conv) and not glu_names:
        raise ValueError(f"prune: 'conv' is {cfg.conv}, but the model has no GLU conv stack to prune")
    _unmatched("heads", cfg.heads, find_attentions(model), "attention")
    _unmatched("ffn", cfg.ffn, find_ffns(model), "feed-forward block")
    inner_convs = [f"{n}.conv_layers.{i}" for n, m in glus.items() for i in range(len(m.conv_layers) - 1)]
    _unmatched("conv", cfg.conv, inner_convs, "inner conv of a GLU conv stack")
    if cfg.importance == "taylor":
        if loss_fn is None:
            raise ValueError("prune: taylor importance needs a loss function and calibration batches")
        scores = taylor_scores(model, cfg, batches, loss_fn)
    else:
        scores = magnitude_scores(model, cfg)

    kept_layers = {}
    for path, n in cfg.layers.items():
        stack = layer_stack(model, path)
        if isinstance(n, list):
            if max(n) >= len(stack):
                raise ValueError(f"prune: 'layers.{path}' keeps layer {max(n)} but the stack has {len(stack)}")
            keep = sorted(n)
        elif n > len(stack):
            raise ValueError(f"prune: 'layers.{path}' keeps {n} layers but the stack has {len(stack)}")
        else:
            keep = _top(scores.layers[path], n)
        kept_layers[path] = keep
        # the names of the modules below change with the layer indices: remember the survivors
        remove_layers(stack, keep)

    # scores were keyed by the names before layer removal: map surviving modules to them
    attn_names = {id(m): n for n, m in _named_before(scores.heads, model, kept_layers, find_attentions)}
    ffn_names = {id(m): n for n, m in _named_before(scores.channels, model, kept_layers, find_ffns)}
    kept_heads, kept_channels = {}, {}
    for name, attn in find_attentions(model).items():
        old = attn_names[id(attn)]
        keep = _top(scores.heads[old], max(1, math.ceil(fraction_for(cfg.heads, old) * attn.heads - 1e-9)))
        if len(keep) < attn.heads:
            prune_heads(attn, keep)
        kept_heads[name] = keep
    for name, ffn in find_ffns(model).items():
        old = ffn_names[id(ffn)]
        n = max(1, math.ceil(fraction_for(cfg.ffn, old) * ffn.fc1.out_features - 1e-9))
        if n < ffn.fc1.out_features:
            prune_channels(ffn, _top(scores.channels[old], n))
        kept_channels[name] = ffn.fc1.out_features
    kept_glu = {}
    for name, stack in find_glu_convs(model).items():
        for i in range(len(stack.conv_layers) - 1):
            key, h = f"{glu_names[id(stack)]}.conv_layers.{i}", stack.conv_layers[i].out_channels // 2
            n = max(1, math.ceil(fraction_for(cfg.conv, key) * h - 1e-9))
            if n < h:
                prune_glu_channels(stack, i, _top(scores.glu[key], n))
            kept_glu[f"{name}.conv_layers.{i}"] = stack.conv_layers[i].out_channels // 2
    return PruneResult(before, count_params(model), kept_layers, kept_heads, kept_channels, kept_glu)


def _named_before(scored: dict[str, Tensor], model: nn.Module, kept_layers: dict[str, list[int]],
                  finder: Callable[[nn.Module], dict[str, nn.Module]]) -> list[tuple[str, nn.Module]]:
    """(name before layer removal, module) for the modules that survived it."""
    out = []
    for name, m in finder(model).items():
        old = name
        for path, keep in kept_layers.items():
            prefix = f"{path}."
            if name.startswith(prefix):
                idx, _, rest = name[len(prefix):].partition(".")
                old = f"{prefix}{keep[int(idx)]}" + (f".{rest}" if rest else "")
        if old not in scored:
            raise ValueError(f"prune: no score for '{old}' (module '{name}')")
        out.append((old, m))
    return out
