import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file

from speech.config import ConfigError
from speech.checkpoint import CheckpointError, load_model_dir, save_model_dir
from speech.losses import ctc_loss, label_smoothed_nll_loss
from speech.model import MultiHeadAttention, S2TModel, additive_mask, param_count
from speech.model_config import PRESETS, preset

VOCAB = 40


def tiny_model(seed: int = 0, **overrides) -> S2TModel:
    torch.manual_seed(seed)
    return S2TModel(preset("tiny", VOCAB, n_mels=16, **overrides))


def subsampled(n: int) -> int:
    for _ in range(2):
        n = math.floor((n - 1) / 2 + 1)
    return n


def test_shapes_and_exact_subsampled_lengths():
    model = tiny_model().eval()
    lens = torch.tensor([1, 2, 3, 4, 5, 7, 9, 37, 41])
    feats = torch.randn(len(lens), int(lens.max()), 16)
    tokens = torch.randint(4, VOCAB, (len(lens), 6))
    with torch.no_grad():
        out = model(feats, lens, tokens)
        enc_out, enc_lens, enc_mask = model.encode(feats, lens)
    want = [subsampled(int(n)) for n in lens]
    assert want[:7] == [1, 1, 1, 1, 2, 2, 3]
    assert out["enc_lens"].tolist() == want == enc_lens.tolist()
    assert enc_out.shape == (len(lens), max(want), 64)
    assert enc_mask.dtype == torch.bool and enc_mask.sum(1).tolist() == [max(want) - n for n in want]
    assert out["logits"].shape == (len(lens), 6, VOCAB)
    assert out["ctc_logits"].shape == (len(lens), max(want), VOCAB)
    assert tiny_model(ctc=False)(feats, lens, tokens)["ctc_logits"] is None
    short = tiny_model(max_source_positions=40, max_target_positions=5)
    with pytest.raises(ValueError, match="input frames: 41 is longer than the model's limit of 40"):
        short.encode(feats, lens)
    with pytest.raises(ValueError, match="target tokens: 6 is longer"):
        short(feats[:, :40], lens.clamp(max=40), tokens)


def test_padding_does_not_change_the_shorter_item():
    model = tiny_model().eval()
    long_f, short_f = torch.randn(53, 16), torch.randn(23, 16)
    long_t, short_t = torch.randint(4, VOCAB, (9,)), torch.randint(4, VOCAB, (5,))
    feats = torch.full((2, 53, 16), 7.0)  # garbage padding: it must be masked, not merely zero
    feats[0], feats[1, :23] = long_f, short_f
    tokens = torch.zeros(2, 9, dtype=torch.long)
    tokens[0], tokens[1, :5] = long_t, short_t
    with torch.no_grad():
        batch = model(feats, torch.tensor([53, 23]), tokens)
        alone = model(short_f[None], torch.tensor([23]), short_t[None])
    n = subsampled(23)
    assert batch["enc_lens"][1] == n == alone["ctc_logits"].shape[1]
    torch.testing.assert_close(batch["ctc_logits"][1, :n], alone["ctc_logits"][0], atol=1e-5, rtol=0)
    torch.testing.assert_close(batch["logits"][1, :5], alone["logits"][0], atol=1e-5, rtol=0)


def test_incremental_decoding_matches_teacher_forcing():
    model = tiny_model(seed=1).eval()
    feats, lens = torch.randn(3, 31, 16), torch.tensor([31, 17, 25])
    tokens = torch.randint(4, VOCAB, (3, 8))
    with torch.no_grad():
        enc_out, _, enc_mask = model.encode(feats, lens)
        full = model.decoder(tokens, enc_out, enc_mask)
        cache = model.decoder.new_cache()
        steps = [model.decoder(tokens[:, : t + 1], enc_out, enc_mask, cache) for t in range(8)]
        assert len(cache) == 8 and all(s.shape == (3, 1, VOCAB) for s in steps)
        torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-5, rtol=0)

        # a forced prefix of several tokens at once, then steps; then reorder rows like a beam search
        cache = model.decoder.new_cache()
        head = model.decoder(tokens[:, :3], enc_out, enc_mask, cache)
        torch.testing.assert_close(head, full[:, :3], atol=1e-5, rtol=0)
        cache.reorder(torch.tensor([2, 0]))
        swapped = model.decoder(tokens[[2, 0], :4], enc_out[[2, 0]], enc_mask[[2, 0]], cache)
        torch.testing.assert_close(swapped[:, 0], full[[2, 0], 3], atol=1e-5, rtol=0)
        with pytest.raises(ValueError, match="already cached"):
            model.decoder(tokens[:, :4], enc_out, enc_mask, cache)


def test_whisper_base_preset_has_whisper_size():
    with torch.device("meta"):
        m = S2TModel(preset("whisper-base", 51865))
    # Hugging Face counts Whisper base at 72,593,920: less its stored encoder positions
    # (1500 x 512; ours are computed), plus the zero key biases Whisper lacks (18 x 512)
    assert param_count(m) == 72_593_920 - 1500 * 512 + 18 * 512
    assert m.decoder.embed_positions.weight.shape == (448, 512) and m.ctc_head is None


def test_s_preset_has_fairseq_size():
    with torch.device("meta"):
        s = S2TModel(preset("s", 10000))
        s_no_ctc = S2TModel(preset("s", 10000, ctc=False))
    # 12 encoder layers x 1,315,072 + 6 decoder layers x 1,578,752 + subsampler 1,721,856
    # + embedding 2,560,000 (tied with the output) + 2 final LayerNorms 1,024 = 29,536,256;
    # the CTC head adds 2,570,000
    assert param_count(s_no_ctc) == 29_536_256
    assert param_count(s) == 32_106_256
    assert 29e6 < param_count(s_no_ctc) < param_count(s) < 33e6
    assert set(PRESETS) == {"tiny", "small", "s", "whisper-base"}
    with pytest.raises(ConfigError, match="known: tiny, small, s, whisper-base"):
        preset("xl", 100)
    with pytest.raises(ConfigError, match="'head'"):
        preset("tiny", 100, head=3)
    with pytest.raises(ConfigError, match="multiple of 'heads'"):
        preset("tiny", 100, heads=5)


def test_pruned_attention_heads_keep_working():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, heads=4).eval()
    x = torch.randn(2, 5, 32)
    keep = torch.cat([torch.arange(0, 8), torch.arange(16, 24)])  # heads 0 and 2 of 4 (head_dim 8)
    with torch.no_grad():
        attn.out_proj.weight[:, 8:16] = 0
        attn.out_proj.weight[:, 24:32] = 0
        want = attn(x, *attn.keys_values(x))
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight = torch.nn.Parameter(proj.weight[keep])
            proj.bias = torch.nn.Parameter(proj.bias[keep])
        attn.out_proj.weight = torch.nn.Parameter(attn.out_proj.weight[:, keep])
        attn.heads = 2
        torch.testing.assert_close(attn(x, *attn.keys_values(x)), want, atol=1e-6, rtol=0)


def test_attention_with_keys_given_transposed_equals_attention():
    torch.manual_seed(0)
    attn = MultiHeadAttention(32, heads=4).eval()
    x, source = torch.randn(2, 3, 32), torch.randn(2, 7, 32)
    mask = torch.ones(2, 1, 1, 7, dtype=torch.bool)
    mask[1, ..., 4:] = False  # the second source is 4 positions long
    k, v = attn.keys_values(source)
    with torch.no_grad():
        want = attn(x, k, v, mask)
        got = attn.attend_keys_transposed(x, k.transpose(2, 3).contiguous(), v, mask)
        torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
        # the padding is not attended to: changing it changes nothing
        v2 = v.clone()
        v2[1, :, 4:] = 100.0
        torch.testing.assert_close(attn.attend_keys_transposed(x, k.transpose(2, 3), v2, mask), got)
        # the mask as an additive float bias (what the exported graphs use): the same attention
        bias = additive_mask(mask, torch.float32)
        assert bias[0].eq(0).all() and bias[1, ..., :4].eq(0).all() and bias[1, ..., 4:].eq(-math.inf).all()
        torch.testing.assert_close(attn(x, k, v, bias), want, atol=1e-6, rtol=0)
        torch.testing.assert_close(attn.attend_keys_transposed(x, k.transpose(2, 3), v, bias), got, atol=1e-6, rtol=0)


def test_losses():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, VOCAB)
    target = torch.randint(4, VOCAB, (2, 5))
    target[1, 3:] = 0
    loss, nll = label_smoothed_nll_loss(logits, target, epsilon=0.0)
    ce = F.cross_entropy(logits.transpose(1, 2), target, ignore_index=0, reduction="sum")
    torch.testing.assert_close(loss, ce)
    torch.testing.assert_close(nll, ce)
    smoothed, nll2 = label_smoothed_nll_loss(logits, target, epsilon=0.1)
    torch.testing.assert_close(nll2, ce)
    assert smoothed > nll2 * 0.9
    # an impossible alignment (target longer than the input) counts as zero, not inf
    ctc = ctc_loss(torch.randn(2, 3, VOCAB), torch.tensor([3, 2]), torch.randint(4, VOCAB, (2, 6)),
                   torch.tensor([2, 6]), blank=0)
    assert torch.isfinite(ctc) and ctc > 0


def test_a_few_sgd_steps_reduce_the_joint_loss():
    model = tiny_model(seed=3)
    torch.manual_seed(3)
    feats, lens = torch.randn(4, 40, 16), torch.tensor([40, 36, 30, 25])
    seq = torch.randint(4, VOCAB, (4, 7))
    seq[:, 0], seq[:, -1] = 5, 3  # <lang> ... </s>
    seq[3, 5:] = torch.tensor([3, 0])  # a shorter target, padded
    prev, target = seq[:, :-1], seq[:, 1:]
    ctc_targets, ctc_lens = target.clamp(min=0), (target > 3).sum(1)

    def joint_loss():
        out = model(feats, lens, prev)
        ls, _ = label_smoothed_nll_loss(out["logits"], target)
        ctc = ctc_loss(out["ctc_logits"], out["enc_lens"], ctc_targets, ctc_lens)
        return (ls + ctc) / (target != 0).sum()

    model.eval()
    with torch.no_grad():
        before = joint_loss().item()
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    model.train()
    for _ in range(15):
        opt.zero_grad()
        joint_loss().backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        after = joint_loss().item()
    assert after < 0.8 * before, (before, after)


def test_save_load_round_trip_and_fp16(tmp_path):
    model = tiny_model(seed=4).eval()
    feats, lens, tokens = torch.randn(2, 30, 16), torch.tensor([30, 21]), torch.randint(4, VOCAB, (2, 5))
    extra = {"languages": ["de", "ja"], "features": {"n_mels": 16}, "recipe": "st_small.yaml"}
    save_model_dir(model, model.cfg, tmp_path / "fp32", extra)
    loaded, config = load_model_dir(tmp_path / "fp32")
    assert config["languages"] == ["de", "ja"] and config["model"]["d_model"] == 64
    assert loaded.cfg == model.cfg and not loaded.training
    assert loaded.decoder.output_projection.weight is loaded.decoder.embed_tokens.weight
    with torch.no_grad():
        a, b = model(feats, lens, tokens), loaded(feats, lens, tokens)
    assert torch.equal(a["logits"], b["logits"]) and torch.equal(a["ctc_logits"], b["ctc_logits"])
    assert sorted(p.name for p in (tmp_path / "fp32").iterdir()) == ["config.json", "model.safetensors"]

    save_model_dir(model, model.cfg, tmp_path / "fp16", extra, dtype=torch.float16)
    size32 = (tmp_path / "fp32" / "model.safetensors").stat().st_size
    size16 = (tmp_path / "fp16" / "model.safetensors").stat().st_size
    assert 0.45 < size16 / size32 < 0.55
    half, _ = load_model_dir(tmp_path / "fp16")
    assert all(p.dtype == torch.float32 for p in half.parameters())
    with torch.no_grad():
        torch.testing.assert_close(half(feats, lens, tokens)["logits"], a["logits"], atol=5e-2, rtol=0)

    untied = tiny_model(seed=5, share_decoder_input_output_embed=False).eval()
    save_model_dir(untied, untied.cfg, tmp_path / "untied")
    again, _ = load_model_dir(tmp_path / "untied")
    with torch.no_grad():
        assert torch.equal(untied(feats, lens, tokens)["logits"], again(feats, lens, tokens)["logits"])


def test_broken_model_dirs_name_the_file_and_key(tmp_path):
    model = tiny_model()
    d = save_model_dir(model, model.cfg, tmp_path / "m", {"languages": ["de"]})
    good = json.loads((d / "config.json").read_text())

    def with_model(**change):
        cfg = {**good, "model": {**good["model"], **change}}
        (d / "config.json").write_text(json.dumps(cfg))

    cfg = dict(good["model"])
    del cfg["heads"]
    (d / "config.json").write_text(json.dumps({**good, "model": cfg}))
    with pytest.raises(ConfigError, match=r"config\.json: missing key 'model\.heads'"):
        load_model_dir(d)
    with_model(n_heads=4)
    with pytest.raises(ConfigError, match=r"config\.json: unknown key 'model\.n_heads'"):
        load_model_dir(d)
    with_model(d_model="64")
    with pytest.raises(ConfigError, match=r"config\.json: 'model\.d_model' must be"):
        load_model_dir(d)
    (d / "config.json").write_text('{"model": {\n  "d_model": 64,,\n}}')
    with pytest.raises(ConfigError, match=r"config\.json:2: invalid JSON"):
        load_model_dir(d)
    (d / "config.json").write_text(json.dumps({"languages": ["de"]}))
    with pytest.raises(ConfigError, match=r"config\.json: missing key 'model'"):
        load_model_dir(d)

    with_model()
    tensors = load_file(d / "model.safetensors")
    name = "decoder.layers.1.encoder_attn.k_proj.weight"
    save_file({k: v for k, v in tensors.items() if k != name}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"model\.safetensors: missing tensor '{name}'"):
        load_model_dir(d)
    save_file({**tensors, "decoder.extra.weight": torch.zeros(2)}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: unexpected tensor 'decoder\.extra\.weight'"):
        load_model_dir(d)
    save_file({**tensors, name: torch.zeros(3, 64)}, d / "model.safetensors")
    with pytest.raises(CheckpointError, match=rf"'{name}' has shape \(3, 64\)"):
        load_model_dir(d)
    (d / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match=r"model\.safetensors: cannot read"):
        load_model_dir(d)


class _Export(torch.nn.Module):
    """forward() with tensor outputs only, for the exporters."""

    def __init__(self, model: S2TModel):
        super().__init__()
        self.model = model

    def forward(self, features, feat_lens, prev_tokens):
        out = self.model(features, feat_lens, prev_tokens)
        return out["logits"], out["ctc_logits"], out["enc_lens"]


def _export_inputs(batch: int, frames: int, tokens: int):
    g = torch.Generator().manual_seed(batch * 1000 + frames)
    lens = torch.linspace(frames, max(frames // 2, 1), batch).long()
    return torch.randn(batch, frames, 16, generator=g), lens, torch.randint(4, VOCAB, (batch, tokens), generator=g)




def _dynamic_shapes():
    dyn = torch.export.Dim.DYNAMIC
    # Dim.DYNAMIC rather than named Dims: the subsampled length (T-1)//4+1 makes the
    # exporter add a guard (T' != 1) that named ranges cannot express
    return ({0: dyn, 1: dyn}, {0: dyn}, {0: dyn, 1: dyn})


def test_torch_export_keeps_batch_and_lengths_dynamic():
    model = tiny_model(encoder_layers=1, decoder_layers=1).eval()
    wrapper = _Export(model)
    ep = torch.export.export(wrapper, _export_inputs(2, 37, 5), dynamic_shapes=_dynamic_shapes())
    for shape in [(1, 9, 1), (3, 64, 7), (2, 5, 2)]:
        args = _export_inputs(*shape)
        with torch.no_grad():
            got, want = ep.module()(*args), wrapper(*args)
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, atol=1e-5, rtol=0)


def test_onnx_export_with_dynamic_axes(tmp_path):
    model = tiny_model(encoder_layers=1, decoder_layers=1).eval()
    wrapper = _Export(model)
    path = tmp_path / "s2t.onnx"
    torch.onnx.export(wrapper, _export_inputs(2, 37, 5), str(path), dynamo=True,
                      input_names=["features", "feat_lens", "prev_tokens"],
                      output_names=["logits", "ctc_logits", "enc_lens"], dynamic_shapes=_dynamic_shapes())
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 9, 1), (3, 64, 7)]:
        f, l, t = _export_inputs(*shape)
        got = sess.run(None, {"features": f.numpy(), "feat_lens": l.numpy(), "prev_tokens": t.numpy()})
        with torch.no_grad():
            want = wrapper(f, l, t)
        for g, w in zip(got, want):
            torch.testing.assert_close(torch.from_numpy(g), w, atol=1e-4, rtol=0)
