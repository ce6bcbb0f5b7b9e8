"""Encoder-decoder models on ONNX Runtime: two graphs with a KV cache, and a model object
the search runs.

    export_s2t("models/st_small", "out/onnx")                # encoder.onnx, decoder.onnx, *.int8.onnx, onnx.json
    model = OnnxS2TModel("out/onnx", precision="int8")
    results = search([model], encode([model], feats, lens), prefix, opts)   # speech.decode, unchanged

Two families export alike: speech models (:class:`speech.model.S2TModel`, the ``s2t``
family) and text models (:class:`speech.text_model.MTModel`, the ``text`` family: the
simultaneous translator, the ST decoder's text pretraining). They differ only in the
encoder's input; ``onnx.json`` says which (``family``; an index without it is ``s2t``).

The two graphs (``B`` rows, ``T`` frames or source tokens, ``S`` encoder positions, ``P``
cached tokens, ``N`` new tokens; every one of these axes is dynamic):

- ``encoder.onnx``: ``features`` (B, T, n_mels) float32, ``feat_lens`` (B,) int64 (text:
  ``src_tokens`` (B, T) int64, ``src_lens`` (B,) int64) ->
  ``enc_out`` (B, S, D), ``enc_lens`` (B,) int64, ``enc_mask`` (B, S) bool True at
  padding, and for every decoder layer ``i`` its cross-attention keys and values
  ``cross_k_i`` (B, H_i, head_dim_i, S), transposed once here so that no decoder step
  transposes them, and ``cross_v_i`` (B, H_i, S, head_dim_i): the decoder never recomputes
  them.
- ``decoder.onnx``, one step: ``tokens`` (B, N) int64 (the tokens not yet cached),
  ``enc_mask``, the ``cross_k_i``/``cross_v_i`` and the self-attention cache
  ``past_k_i``/``past_v_i`` (B, H_i, P, head_dim_i) -> ``logits`` (B, N, V) and
  ``present_k_i``/``present_v_i`` (B, H_i, P + N, head_dim_i). One pair per layer, since
  pruned layers may keep different numbers of heads. The first step feeds P = 0.

Heads and head sizes are read per layer from the modules (``layer.self_attn.heads``,
``.head_dim``), never from ``ModelConfig.heads``. The int8 graphs are onnxruntime's dynamic
quantization of every MatMul (:mod:`compress.quantize`); the speech encoder's conv
subsampler is exported as matrix products over unfolded frames
(:class:`UnfoldedSubsampler`), so it is one of them.

:class:`OnnxS2TModel` has the decoding interface of :class:`speech.model.S2TModel`
(``cfg``, ``encode``, ``decoder(tokens, enc_out, enc_mask, cache)``, ``decoder.new_cache()``,
a cache with ``reorder`` and ``len``). The search moves rows of ``enc_out`` around
(``repeat_interleave`` per language, ``index_select`` per beam) before the first decoder
step, so ``encode`` returns ``enc_out`` as an :class:`EncoderOutput`: the encoder output
itself, which also remembers which encoder row each of its rows came from; the first
decoder step takes those rows of the encoder's cross-attention keys and values.

An export folder holds the graphs and ``onnx.json`` (format, the ModelConfig, per-layer
heads, the graph files and their input/output names, and the sha256 of the model
directory it came from); it is written to a temporary folder and renamed into place.
A model with a CTC head also leaves ``ctc_head.safetensors`` (one float32 Linear):
:class:`OnnxS2TModel` runs it in torch on ``enc_out``, so joint CTC/attention
transcription (:class:`speech.decode.CTCPrefixScorer`) works on this runtime too.
"""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from compress.errors import UserError
from compress.export import export_onnx
from compress.files import atomic_dir, write_json_atomic
from compress.quantize import DEFAULT_ONNX_OPS, quantize_onnx_int8
from compress.runtime import OrtSession
from speech.checkpoint import CONFIG_FILE, load_model_dir, model_config_from_dict, model_dir_hash
from speech.config import config_to_dict
from speech.data.cache import interpres_home
from speech.model import Conv1dSubsampler, LayerCache, S2TModel, additive_mask, lengths_to_padding_mask
from speech.model_config import ModelConfig
from speech.text_model import MTConfig, MTModel

log = logging.getLogger(__name__)

ONNX_DIR = "onnx"  # a model directory's own export, and the cache folder under $INTERPRES_HOME
INDEX_FILE = "onnx.json"
FORMAT = 5  # onnx.json's layout, the graphs' inputs and outputs, or how the graphs compute
# (4: float attention masks; 5: the conv subsampler as int8 matmuls); a change re-exports cached folders
PRECISIONS = ("fp32", "int8")
GRAPH_FILES = {"fp32": ("encoder.onnx", "decoder.onnx"), "int8": ("encoder.int8.onnx", "decoder.int8.onnx")}
CTC_HEAD_FILE = "ctc_head.safetensors"
# per family: its model and config classes and the encoder graph's two inputs
FAMILIES = {"s2t": (S2TModel, ModelConfig, ("features", "feat_lens")),
            "text": (MTModel, MTConfig, ("src_tokens", "src_lens"))}


class OnnxModelError(UserError, ValueError):
    """An ONNX export folder is missing, stale or broken; the message names the file."""


# --------------------------------------------------------------------------- graphs


def _decoder_layers(model: S2TModel) -> list[dict[str, int]]:
    """Per decoder layer: heads and head size of its self- and cross-attention."""
    return [{"self_heads": layer.self_attn.heads, "self_head_dim": layer.self_attn.head_dim,
             "cross_heads": layer.encoder_attn.heads, "cross_head_dim": layer.encoder_attn.head_dim}
            for layer in model.decoder.layers]


def _names(prefix: str, n: int) -> list[str]:
    return [f"{prefix}_{kv}_{i}" for i in range(n) for kv in ("k", "v")]


def family_of(model: nn.Module) -> str:
    for name, (cls, _, _) in FAMILIES.items():
        if isinstance(model, cls):
            return name
    raise TypeError(f"cannot export a {type(model).__name__}: known families are {', '.join(FAMILIES)}")


def encoder_io(n_layers: int, family: str = "s2t") -> tuple[list[str], list[str]]:
    return list(FAMILIES[family][2]), ["enc_out", "enc_lens", "enc_mask", *_names("cross", n_layers)]


def decoder_io(n_layers: int) -> tuple[list[str], list[str]]:
    return (["tokens", "enc_mask", *_names("cross", n_layers), *_names("past", n_layers)],
            ["logits", *_names("present", n_layers)])


class UnfoldedSubsampler(nn.Module):
    """A :class:`speech.model.Conv1dSubsampler` as matrix products, for export: the same
    function, time-major throughout. Each strided conv (kernel k, stride 2, padding k // 2)
    gathers the padded frames into windows of k frames every 2, (B, T', k * C), and
    multiplies them by the conv's weights laid out tap by tap in a (C_out, k * C)
    nn.Linear, then the GLU halves the last axis. Exported, a conv is then a MatMul that
    onnxruntime's dynamic quantization makes int8 like every other (it leaves Conv in
    float32), with no (B, C, T) transposes around it. The 5.14M student's encoder on the
    220 test items at batch 16, 2 cores: int8 0.67 -> 0.58 s, float32 1.09 -> 1.04 s
    (BENCHMARKS.md, issue 6)."""

    def __init__(self, sub: nn.Module):
        super().__init__()
        self.kernels = [conv.kernel_size[0] for conv in sub.conv_layers]
        self.linears = nn.ModuleList()
        for conv in sub.conv_layers:
            if conv.stride != (2,) or conv.padding != (conv.kernel_size[0] // 2,) or conv.dilation != (1,):
                raise ValueError(f"UnfoldedSubsampler: a conv with stride 2, padding kernel // 2 and no dilation "
                                 f"expected, got {conv}")
            out_ch, in_ch, k = conv.weight.shape
            linear = nn.Linear(k * in_ch, out_ch, bias=conv.bias is not None)
            with torch.no_grad():  # weight[o, j * C + c] = conv.weight[o, c, j]: tap-major columns
                linear.weight.copy_(conv.weight.permute(0, 2, 1).reshape(out_ch, k * in_ch))
                if conv.bias is not None:
                    linear.bias.copy_(conv.bias)
            self.linears.append(linear)

    def forward(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        for k, linear in zip(self.kernels, self.linears):
            frames = x.shape[1]
            x = x.masked_fill(lengths_to_padding_mask(lengths, frames)[:, :, None], 0.0)
            padded = F.pad(x, (0, 0, k // 2, k // 2))  # (B, T + k - 1, C)
            out = (frames - 1) // 2 + 1
            # frames 2t .. 2t + k - 1 of padded for every output t, in one Gather; its
            # (B, T' * k, C) reshapes to (B, T', k * C) for free (Tensor.unfold puts the
            # taps last, and its export transposes every window)
            index = (2 * torch.arange(out, device=x.device)[:, None] + torch.arange(k, device=x.device)).flatten()
            taps = padded.index_select(1, index).reshape(x.shape[0], out, k * x.shape[2])
            x = F.glu(linear(taps), dim=2)
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return x, lengths


def for_export(model: S2TModel | MTModel) -> S2TModel | MTModel:
    """``model`` (a copy the caller owns) with its conv subsampler as :class:`UnfoldedSubsampler`."""
    sub = getattr(getattr(model, "encoder", None), "subsample", None)
    if isinstance(sub, Conv1dSubsampler):
        model.encoder.subsample = UnfoldedSubsampler(sub)
    return model


class EncoderGraph(nn.Module):
    """features (B, T, n_mels) or src_tokens (B, T), and their lengths (B,) -> enc_out,
    enc_lens, enc_mask, then cross_k_i (B, H_i, head_dim_i, S) and cross_v_i (B, H_i, S,
    head_dim_i) for every decoder layer i."""

    def __init__(self, model: S2TModel | MTModel):
        super().__init__()
        self.model = model

    def forward(self, source: Tensor, lengths: Tensor) -> tuple[Tensor, ...]:
        enc_out, enc_lens, enc_mask = self.model.encode(source, lengths)
        cross = []
        for layer in self.model.decoder.layers:
            k, v = layer.encoder_attn.keys_values(enc_out)
            cross += [k.transpose(2, 3), v]
        return (enc_out, enc_lens, enc_mask, *cross)


class DecoderStepGraph(nn.Module):
    """One incremental decoder step, the caches as explicit inputs and outputs.

    tokens (B, N) the tokens not yet cached, enc_mask (B, S) True at padding,
    cross [k_0, v_0, k_1, ...] (k: B, H_i, hd_i, S; v: B, H_i, S, hd_i), past [k_0, v_0, ...]
    (B, H_i, P, hd_i)
    -> logits (B, N, V), then present_k_i, present_v_i (B, H_i, P + N, hd_i).
    The arithmetic is TextDecoder.forward's with a cache; the layers are the model's own.
    """

    def __init__(self, model: S2TModel | MTModel):
        super().__init__()
        self.decoder = model.decoder
        # A copy of the output projection as a constant (D, V) matrix: tied to the embedding,
        # it would be exported as a transpose of the shared table, which int8 quantization skips.
        self.register_buffer("output_weight", model.decoder.output_projection.weight.detach().t().contiguous())

    def forward(self, tokens: Tensor, enc_mask: Tensor, cross: list[Tensor], past: list[Tensor]) -> tuple[Tensor, ...]:
        dec = self.decoder
        start = past[0].shape[2]
        total = start + tokens.shape[1]
        q_pos = torch.arange(start, total, device=tokens.device)
        x = dec.embed(tokens, q_pos)
        # float masks, built once per step: boolean ones cost every layer's attention two
        # Where and an IsNaN in the graph (speech.model.additive_mask)
        self_mask = additive_mask(torch.arange(total, device=tokens.device)[None, :] <= q_pos[:, None], x.dtype)
        cross_mask = additive_mask(~enc_mask[:, None, None, :], x.dtype)
        present = []
        for i, layer in enumerate(dec.layers):
            cache = LayerCache(past[2 * i], past[2 * i + 1], cross[2 * i], cross[2 * i + 1], cross_k_transposed=True)
            x = layer(x, None, self_mask, cross_mask, cache)  # appends to cache.self_k/self_v
            present += [cache.self_k, cache.self_v]
        logits = dec.layer_norm(x) @ self.output_weight
        if dec.output_projection.bias is not None:
            logits = logits + dec.output_projection.bias
        return (logits, *present)


def _example_inputs(model: S2TModel | MTModel, batch: int = 2, frames: int = 37, past: int = 3, new: int = 2):
    """Inputs that trace both graphs: every dynamic axis at least 2 long (the tracer
    specialises 0 and 1)."""
    g = torch.Generator().manual_seed(0)
    cfg = model.cfg
    if family_of(model) == "text":
        feats = torch.randint(4, cfg.src_vocab_size, (batch, frames), generator=g)
    else:
        feats = torch.randn(batch, frames, cfg.n_mels, generator=g)
    lens = torch.tensor([frames] + [frames - 5] * (batch - 1), dtype=torch.long)
    with torch.no_grad():
        enc = EncoderGraph(model)(feats, lens)
    enc_mask, cross = enc[2], list(enc[3:])
    layers = _decoder_layers(model)
    past_kv = [torch.randn(batch, layer["self_heads"], past, layer["self_head_dim"], generator=g)
               for layer in layers for _ in "kv"]
    tokens = torch.randint(4, cfg.vocab_size, (batch, new), generator=g)
    return (feats, lens), (tokens, enc_mask, cross, past_kv)


def export_graphs(model: S2TModel | MTModel, folder: Path) -> dict[str, Any]:
    """Write ``encoder.onnx`` and ``decoder.onnx`` (float32, verified against torch) into ``folder``."""
    model = for_export(copy.deepcopy(model).float().eval())  # the caller's model keeps its dtype and mode
    n = len(model.decoder.layers)
    dyn = torch.export.Dim.DYNAMIC
    enc_args, dec_args = _example_inputs(model)
    enc_in, enc_out = encoder_io(n, family_of(model))
    # Dim.DYNAMIC, not named Dims: the subsampled length (T - 1) // 4 + 1 makes the tracer
    # add guards that named ranges cannot express
    export_onnx(EncoderGraph(model), enc_args, folder / GRAPH_FILES["fp32"][0], input_names=enc_in,
                output_names=enc_out, dynamic_shapes=({0: dyn, 1: dyn}, {0: dyn}))
    dec_in, dec_out = decoder_io(n)
    kv, k_t = {0: dyn, 2: dyn}, {0: dyn, 3: dyn}  # cross keys come transposed: S is their last axis
    export_onnx(DecoderStepGraph(model), dec_args, folder / GRAPH_FILES["fp32"][1], input_names=dec_in,
                output_names=dec_out, dynamic_shapes=({0: dyn, 1: dyn}, {0: dyn, 1: dyn}, [k_t, kv] * n,
                                                      [kv] * (2 * n)))
    return {"encoder": {"inputs": enc_in, "outputs": enc_out}, "decoder": {"inputs": dec_in, "outputs": dec_out}}


# --------------------------------------------------------------------------- export folders


def load_any_model_dir(path: str | Path) -> nn.Module:
    """A model directory of either family: a text model's config has ``src_vocab_size``."""
    try:
        conf = json.loads((Path(path) / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        conf = {}  # load_model_dir names what is wrong
    text = isinstance(conf, dict) and isinstance(conf.get("model"), dict) and "src_vocab_size" in conf["model"]
    model_cls, config_cls, _ = FAMILIES["text" if text else "s2t"]
    return load_model_dir(path, config_cls=config_cls, model_cls=model_cls)[0]


def export_s2t(model: S2TModel | MTModel | str | Path, out_dir: str | Path, quantize: str | None = "int8",
               per_channel: bool = True, reduce_range: bool = True,
               op_types: Sequence[str] = DEFAULT_ONNX_OPS) -> Path:
    """Export an S2TModel or MTModel (or a model directory) into the folder ``out_dir``; return it.

    Writes ``encoder.onnx`` and ``decoder.onnx`` in float32, each checked against torch,
    and with ``quantize="int8"`` also ``encoder.int8.onnx`` and ``decoder.int8.onnx``
    (dynamic int8 weights for ``op_types``, per output channel with ``per_channel``), and
    ``onnx.json``. The folder is built beside ``out_dir`` and renamed into place.

    ``reduce_range`` (7-bit weights) is the default because CPUs without VNNI (AVX2 only)
    saturate 8-bit products: there, per-channel 8-bit weights changed the greedy output of
    the bundled model on 14 of 25 test utterances, 7-bit ones on 2.
    """
    if quantize not in (None, "int8"):
        raise ValueError(f"export_s2t: quantize must be 'int8' or None, got {quantize!r}")
    source: dict[str, Any] = {}
    if not isinstance(model, nn.Module):
        source = {"model_dir": str(Path(model).resolve()), "sha256": model_dir_hash(model)}
        model = load_any_model_dir(model)
    out_dir = Path(out_dir)
    with atomic_dir(out_dir) as tmp:
        io = export_graphs(model, tmp)
        graphs: dict[str, Any] = {"fp32": dict(zip(("encoder", "decoder"), GRAPH_FILES["fp32"]))}
        if quantize == "int8":
            for src, dst in zip(GRAPH_FILES["fp32"], GRAPH_FILES["int8"]):
                quantize_onnx_int8(tmp / src, tmp / dst, per_channel=per_channel, reduce_range=reduce_range,
                                   op_types=op_types)
            graphs["int8"] = {**dict(zip(("encoder", "decoder"), GRAPH_FILES["int8"])), "per_channel": per_channel,
                              "reduce_range": reduce_range, "op_types": list(op_types)}
        import onnxruntime
        from safetensors.torch import save_file

        index = {"format": FORMAT, "family": family_of(model), "source": source, "model": config_to_dict(model.cfg),
                 "decoder_layers": _decoder_layers(model), "graphs": graphs, "io": io,
                 "versions": {"torch": torch.__version__, "onnxruntime": onnxruntime.__version__}}
        if getattr(model, "ctc_head", None) is not None:
            save_file({k: v.detach().float().contiguous() for k, v in model.ctc_head.state_dict().items()},
                      str(tmp / CTC_HEAD_FILE))
            index["ctc_head"] = CTC_HEAD_FILE
        write_json_atomic(tmp / INDEX_FILE, index)
    log.info("exported %s", out_dir)
    return out_dir


def _stale(folder: Path, digest: str, precisions: Sequence[str]) -> str | None:
    """Why ``folder`` cannot serve as the export of the weights with sha256 ``digest`` in
    ``precisions``; None when it can."""
    try:
        index = read_index(folder)
    except OnnxModelError as e:
        return str(e)
    if index.get("source", {}).get("sha256") != digest:
        return f"{folder / INDEX_FILE}: exported from other weights than the model directory's"
    missing = [p for p in precisions if p not in index["graphs"]]
    return f"{folder / INDEX_FILE}: no {', '.join(missing)} graphs" if missing else None


def onnx_export_for(model_dir: str | Path, precision: str = "int8") -> Path:
    """The ONNX export folder of a model directory, exporting it on first use.

    A directory's own ``onnx/`` folder is used when it holds ``precision`` graphs of its
    current weights; otherwise ``$INTERPRES_HOME/onnx/<sha256 of config.json and weights>/``,
    exported there (fp32 and int8) if missing or made by another version of this module.
    """
    model_dir = Path(model_dir)
    digest = model_dir_hash(model_dir)
    own = model_dir / ONNX_DIR
    if own.is_dir():
        reason = _stale(own, digest, [precision])
        if reason is None:
            return own
        log.warning("%s; using an export in the cache instead", reason)
    folder = interpres_home() / ONNX_DIR / digest[:16]
    if _stale(folder, digest, PRECISIONS) is not None:
        log.info("exporting %s to ONNX in %s (once)", model_dir, folder)
        export_s2t(model_dir, folder, quantize="int8")
    return folder


def export_once(model_dir: str | Path, out: str | Path, precision: str = "int8", per_channel: bool = True
                ) -> list[Path]:
    """Export ``model_dir`` into ``out`` unless ``out`` already holds its ``precision`` graphs
    (a resumed compression run); return those graph files."""
    out = Path(out)
    try:
        done = precision in read_index(out)["graphs"]
    except (ValueError, OSError):
        done = False
    if not done:
        export_s2t(Path(model_dir), out, quantize="int8" if precision == "int8" else None, per_channel=per_channel)
    return graph_files(out, precision)


def read_index(folder: str | Path) -> dict[str, Any]:
    """``folder/onnx.json``, checked for the keys and format this module writes."""
    path = Path(folder) / INDEX_FILE
    try:
        index = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise OnnxModelError(f"{path}: not found (is {folder} an ONNX export folder?)") from None
    except json.JSONDecodeError as e:
        raise OnnxModelError(f"{path}:{e.lineno}: invalid JSON ({e.msg})") from e
    if not isinstance(index, dict) or index.get("format") != FORMAT:
        got = index.get("format") if isinstance(index, dict) else None
        raise OnnxModelError(f"{path}: export format {got!r}, this version reads {FORMAT}; export again")
    for key in ("model", "decoder_layers", "graphs", "io"):
        if key not in index:
            raise OnnxModelError(f"{path}: missing key '{key}'")
    return index


def graph_files(folder: str | Path, precision: str = "int8") -> list[Path]:
    """The encoder and decoder files of one precision in an export folder."""
    index = read_index(folder)
    if precision not in index["graphs"]:
        raise OnnxModelError(f"{Path(folder) / INDEX_FILE}: no {precision} graphs "
                             f"(exported with: {', '.join(index['graphs'])})")
    graphs = index["graphs"][precision]
    return [Path(folder) / graphs["encoder"], Path(folder) / graphs["decoder"]]


# --------------------------------------------------------------------------- the model


_ROW_OPS = {Tensor.index_select, torch.index_select, Tensor.repeat_interleave, torch.repeat_interleave}


class EncoderOutput(Tensor):
    """``enc_out`` (B, S, D) that remembers the encoder row each of its rows came from.

    Row selections along dim 0 (``index_select``, ``repeat_interleave``) return another
    EncoderOutput with ``rows`` selected alike; every other operation returns a plain
    tensor. ``cross`` holds the encoder graph's cross-attention keys and values for the
    encoder's own rows, shared, never copied.
    """

    cross: list[np.ndarray]
    rows: Tensor

    @staticmethod
    def wrap(data: Tensor, cross: list[np.ndarray], rows: Tensor) -> "EncoderOutput":
        out = Tensor._make_subclass(EncoderOutput, data)
        out.cross, out.rows = cross, rows
        return out

    @classmethod
    def __torch_function__(cls, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        with torch._C.DisableTorchFunctionSubclass():
            out = func(*args, **kwargs)
            if func in _ROW_OPS and isinstance(args[0], EncoderOutput) and _row_dim(func, args, kwargs) == 0:
                return EncoderOutput.wrap(out, args[0].cross, func(args[0].rows, *args[1:], **kwargs))
        return out


def _row_dim(func, args, kwargs) -> int | None:
    if func in (Tensor.index_select, torch.index_select):
        return kwargs.get("dim", args[1] if len(args) > 1 else None)
    return kwargs.get("dim", args[2] if len(args) > 2 else None)  # repeat_interleave(input, repeats, dim)


@dataclass
class OnnxCache:
    """The decoder state of one batch of rows, as the graph takes it: cross-attention keys and
    values (fixed) and self-attention keys and values of the tokens so far, per layer, each a
    numpy array (B, H_i, ., hd_i). Numpy, not torch: a reorder is then one plain copy,
    never a torch parallel region waiting for a core that onnxruntime just used."""

    cross: list[np.ndarray] | None = None
    past: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return 0 if self.past is None else self.past[0].shape[2]

    def reorder(self, index: Tensor, cross: bool = True) -> None:
        """Keep rows ``index`` (B',) in this order; ``cross=False``: the cross-attention keys
        and values stay (row i and row ``index[i]`` attend to the same source)."""
        if self.cross is not None:
            rows = index.cpu().numpy()
            if cross:
                self.cross = [np.take(a, rows, axis=0) for a in self.cross]
            self.past = [np.take(a, rows, axis=0) for a in self.past]


class OnnxDecoder:
    """``decoder(tokens, enc_out, enc_mask, cache) -> logits (B, N, V)`` on decoder.onnx."""

    def __init__(self, session: OrtSession, layers: list[dict[str, int]], max_target_positions: int):
        self.session = session
        self.layers = layers
        self.max_target_positions = max_target_positions
        self._cross_names = _names("cross", len(layers))
        self._past_names = _names("past", len(layers))

    def new_cache(self) -> OnnxCache:
        return OnnxCache()

    def __call__(self, tokens: Tensor, enc_out: Tensor, enc_mask: Tensor | None,
                 cache: OnnxCache | None = None) -> Tensor:
        """tokens (B, U) all tokens so far, enc_out from :meth:`OnnxS2TModel.encode`, enc_mask
        (B, S) True at padding -> logits (B, N, V) of the N tokens not yet in ``cache`` (all
        U without a cache)."""
        if cache is None:
            cache = self.new_cache()
        start, total = len(cache), tokens.shape[1]
        if total <= start:
            raise ValueError(f"decoder: {total} tokens given but {start} are already cached")
        if total > self.max_target_positions:
            raise ValueError(f"target tokens: {total} is longer than the model's limit of {self.max_target_positions}")
        if cache.cross is None:
            self._start(cache, tokens.shape[0], enc_out)
        if enc_mask is None:
            enc_mask = torch.zeros(enc_out.shape[:2], dtype=torch.bool)
        feeds = {"tokens": np.ascontiguousarray(tokens[:, start:].numpy()),
                 "enc_mask": np.ascontiguousarray(enc_mask.numpy())}
        feeds.update(zip(self._cross_names, cache.cross))
        feeds.update(zip(self._past_names, cache.past))
        logits, *cache.past = self.session.run(feeds)
        return torch.from_numpy(logits)

    def _start(self, cache: OnnxCache, batch: int, enc_out: Tensor) -> None:
        if not isinstance(enc_out, EncoderOutput):
            raise ValueError("OnnxS2TModel decoder: enc_out must come from OnnxS2TModel.encode (it carries "
                             "the encoder's cross-attention keys and values; select its rows with "
                             "index_select or repeat_interleave)")
        rows = enc_out.rows.numpy()
        same = len(rows) == len(enc_out.cross[0]) and bool((rows == np.arange(len(rows))).all())
        cache.cross = [a if same else np.take(a, rows, axis=0) for a in enc_out.cross]
        cache.past = [np.zeros((batch, layer["self_heads"], 0, layer["self_head_dim"]), dtype=np.float32)
                      for layer in self.layers for _ in "kv"]


class OnnxS2TModel:
    """An exported model on onnxruntime with the decoding interface of S2TModel (and of
    MTModel, for the ``text`` family).

    The encoder runs on ``threads`` intra-op threads, the decoder on ``decoder_threads``
    (default 1). A decoder step is a handful of small matrix products (one token per row),
    too small to split across cores: waking a second onnxruntime thread for each of them
    costs more than it saves, and spinning threads would fight torch's, which do the
    search's work between steps. Measured on 2 cores (55 tst-COMMON items, int8, two
    interleaved rounds): the bundled translator's p50 at batch 1 and beam 5 went from
    34-43 ms to 27-28 ms, and the pruned student's greedy batch-16 throughput from 64-80 to
    101-110 items/s (BENCHMARKS.md, issue 6)."""

    def __init__(self, folder: str | Path, precision: str = "int8", threads: int | None = None,
                 decoder_threads: int = 1):
        if precision not in PRECISIONS:
            raise ValueError(f"OnnxS2TModel: precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
        self.folder = Path(folder)
        index = read_index(self.folder)
        encoder_file, decoder_file = graph_files(self.folder, precision)
        self.precision = precision
        self.family = index.get("family", "s2t")
        if self.family not in FAMILIES:
            raise OnnxModelError(f"{self.folder / INDEX_FILE}: unknown family {self.family!r} "
                                 f"(known: {', '.join(FAMILIES)})")
        self.cfg = model_config_from_dict(index["model"], str(self.folder / INDEX_FILE), FAMILIES[self.family][1])
        layers = index["decoder_layers"]
        self.encoder = OrtSession(encoder_file, threads)
        self.encoder.check_names(*encoder_io(len(layers), self.family))
        session = OrtSession(decoder_file, decoder_threads)
        session.check_names(*decoder_io(len(layers)))
        self.decoder = OnnxDecoder(session, layers, self.cfg.max_target_positions)
        self.ctc_head: nn.Linear | None = None  # in torch, on enc_out: joint CTC/attention decoding
        if index.get("ctc_head"):
            from safetensors.torch import load_file

            path = self.folder / index["ctc_head"]
            try:
                weights = load_file(str(path))
                head = nn.Linear(weights["weight"].shape[1], weights["weight"].shape[0])
                head.load_state_dict(weights)
            except (OSError, KeyError, RuntimeError) as e:
                raise OnnxModelError(f"{path}: not a CTC head ({e})") from e
            self.ctc_head = head.eval().requires_grad_(False)

    def eval(self) -> "OnnxS2TModel":
        return self  # always in inference mode; for code that calls model.eval()

    def encode(self, features: Tensor, feat_lens: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """features (B, T, n_mels) (text: source tokens (B, T)), feat_lens (B,) -> enc_out
        (B, S, D) as an EncoderOutput, enc_lens (B,), enc_mask (B, S) bool True at padding"""
        if features.shape[1] > self.cfg.max_source_positions:
            what = "source tokens" if self.family == "text" else "input frames"
            raise ValueError(f"{what}: {features.shape[1]} is longer than the model's limit of "
                             f"{self.cfg.max_source_positions}")
        source_name, lens_name = FAMILIES[self.family][2]
        dtype = torch.long if self.family == "text" else torch.float32
        feeds = {source_name: features.detach().to(dtype).contiguous().numpy(),
                 lens_name: feat_lens.detach().to(torch.long).contiguous().numpy()}
        enc_out, enc_lens, enc_mask, *cross = self.encoder.run(feeds)
        rows = torch.arange(enc_out.shape[0])
        return (EncoderOutput.wrap(torch.from_numpy(enc_out), cross, rows), torch.from_numpy(enc_lens),
                torch.from_numpy(enc_mask))

    def __repr__(self) -> str:
        return f"OnnxS2TModel({self.folder}, {self.precision})"
