"""compress.prune: heads, FFN channels and layers physically removed, scored by magnitude or
Taylor, and the pruned speech model loading from its own config."""

import dataclasses

import pytest
import torch

from compress.prune import (PruneConfig, count_params, find_attentions, find_ffns, find_glu_convs, fraction_for,
                            magnitude_scores, prune, prune_channels, prune_glu_channels, prune_heads, taylor_scores)
from speech.checkpoint import load_model_dir, save_model_dir
from speech.losses import label_smoothed_nll_loss
from speech.model import S2TModel, layout_of
from speech.model_config import preset


def tiny(seed=0):
    torch.manual_seed(seed)
    return S2TModel(preset("tiny", vocab_size=40, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0)).eval()


def batch(seed=1):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(3, 50, 80, generator=g)
    lens = torch.tensor([50, 41, 33])
    prev = torch.randint(4, 40, (3, 6), generator=g)
    target = torch.randint(4, 40, (3, 6), generator=g)
    return {"features": feats, "feat_lens": lens, "prev": prev, "target": target}


def loss_fn(model, b):
    out = model(b["features"], b["feat_lens"], b["prev"])
    return label_smoothed_nll_loss(out["logits"], b["target"], 0.1)[0] / b["target"].numel()


def logits(model, b):
    with torch.no_grad():
        return model(b["features"], b["feat_lens"], b["prev"])["logits"]


def test_finds_every_attention_and_ffn():
    m = tiny()
    assert len(find_attentions(m)) == 2 + 2 * 2  # encoder self; decoder self + cross
    assert len(find_ffns(m)) == 4
    assert list(find_glu_convs(m)) == ["encoder.subsample"]


def test_removing_heads_equals_zeroing_them():
    m, b = tiny(), batch()
    ref = tiny()
    attn, ref_attn = m.encoder.layers[0].self_attn, ref.encoder.layers[0].self_attn
    d = attn.head_dim
    with torch.no_grad():  # heads 1 and 3 silenced in the reference: their out_proj columns zeroed
        for h in (1, 3):
            ref_attn.out_proj.weight[:, h * d:(h + 1) * d] = 0
    prune_heads(attn, [0, 2])
    assert attn.heads == 2 and attn.q_proj.weight.shape == (2 * d, 64) and attn.out_proj.weight.shape == (64, 2 * d)
    torch.testing.assert_close(logits(m, b), logits(ref, b), rtol=1e-5, atol=1e-5)


def test_removing_channels_equals_zeroing_them():
    m, b, ref = tiny(), batch(), tiny()
    keep = list(range(0, 128, 2))
    drop = [c for c in range(128) if c not in keep]
    with torch.no_grad():
        ref.decoder.layers[1].ffn.fc2.weight[:, drop] = 0
    prune_channels(m.decoder.layers[1].ffn, keep)
    assert m.decoder.layers[1].ffn.fc1.out_features == 64
    torch.testing.assert_close(logits(m, b), logits(ref, b), rtol=1e-5, atol=1e-5)


def test_removing_glu_channels_equals_zeroing_them():
    m, b, ref = tiny(), batch(), tiny()
    sub, ref_sub = m.encoder.subsample, ref.encoder.subsample
    h = sub.conv_layers[0].out_channels // 2  # 32 GLU channels between the two convs
    keep = [c for c in range(h) if c % 3]
    drop = [c for c in range(h) if c not in keep]
    with torch.no_grad():  # dropped channels silenced in the reference: the next conv ignores them
        ref_sub.conv_layers[1].weight[:, drop] = 0
    prune_glu_channels(sub, 0, keep)
    assert sub.conv_layers[0].weight.shape == (2 * len(keep), 80, 5)
    assert sub.conv_layers[1].weight.shape == (sub.conv_layers[1].out_channels, len(keep), 5)
    torch.testing.assert_close(logits(m, b), logits(ref, b), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="not an inner conv"):
        prune_glu_channels(sub, 1, [0])
    with pytest.raises(ValueError, match="not distinct channels"):
        prune_glu_channels(sub, 0, [0, 0])


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_an_unused_head_and_channel_rank_lowest(importance):
    m = tiny()
    attn = m.decoder.layers[0].encoder_attn
    d = attn.head_dim
    with torch.no_grad():  # head 2 and channel 5 do nothing: both scores must be ~0 there
        for proj in (attn.q_proj, attn.k_proj, attn.v_proj):
            proj.weight[2 * d:3 * d] = 0
            proj.bias[2 * d:3 * d] = 0
        attn.out_proj.weight[:, 2 * d:3 * d] = 0
        ffn = m.encoder.layers[1].ffn
        ffn.fc1.weight[5] = 0
        ffn.fc1.bias[5] = 0
        ffn.fc2.weight[:, 5] = 0
        convs = m.encoder.subsample.conv_layers  # GLU channel 7: its value and gate rows, the next input
        h = convs[0].out_channels // 2
        for row in (7, 7 + h):
            convs[0].weight[row] = 0
            convs[0].bias[row] = 0
        convs[1].weight[:, 7] = 0
    cfg = PruneConfig(importance=importance, layers={"encoder.layers": 1})
    scores = (magnitude_scores(m, cfg) if importance == "magnitude"
              else taylor_scores(m, cfg, [batch(1), batch(2)], loss_fn))
    assert int(scores.heads["decoder.layers.0.encoder_attn"].argmin()) == 2
    assert int(scores.channels["encoder.layers.1.ffn"].argmin()) == 5
    assert int(scores.glu["encoder.subsample.conv_layers.0"].argmin()) == 7
    assert scores.glu["encoder.subsample.conv_layers.0"].shape == (h,)
    assert scores.layers["encoder.layers"].shape == (2,)
    assert all(p.grad is None for p in m.parameters())  # taylor leaves no gradients behind


@pytest.mark.parametrize("importance", ["magnitude", "taylor"])
def test_prune_shrinks_and_the_model_loads_from_its_own_config(tmp_path, importance):
    m, b = tiny(), batch()
    cfg = PruneConfig(importance=importance, heads=0.5, ffn=0.25, conv=0.5,
                      layers={"encoder.layers": 1, "decoder.layers": 1}, calibration_batches=2)
    result = prune(m, cfg, [batch(3), batch(4)], loss_fn)
    assert result.params_after == count_params(m) < result.params_before
    assert len(m.encoder.layers) == 1 and len(m.decoder.layers) == 1
    layout = layout_of(m)
    assert layout["encoder_layout"] == [[2, 32]] and layout["decoder_layout"] == [[2, 2, 32]]
    assert layout["head_dim"] == 16  # d_model 64 / 4 heads, kept although only 2 heads remain
    assert layout["conv_channels"] == 32 and result.kept_glu == {"encoder.subsample.conv_layers.0": 16}
    out = logits(m, b)
    assert out.shape == (3, 6, 40) and torch.isfinite(out).all()

    cfg2 = dataclasses.replace(m.cfg, **layout)
    save_model_dir(m, cfg2, tmp_path / "pruned")
    loaded, _ = load_model_dir(tmp_path / "pruned")
    torch.testing.assert_close(logits(loaded, b), out)
    assert (tmp_path / "pruned" / "model.safetensors").stat().st_size < 0.5 * sum(
        p.numel() * 4 for p in tiny().parameters())


def test_fractions_per_module_path(tmp_path):
    """A mapping gives each module the fraction of the longest path naming it; the rest stay whole."""
    m, b = tiny(), batch()
    cfg = PruneConfig(importance="magnitude", heads={"decoder": 0.5, "decoder.layers.1.encoder_attn": 0.25},
                      ffn={"encoder": 0.5, "encoder.layers.1.ffn": 0.25}, conv={"encoder.subsample": 0.5},
                      layers={"encoder.layers": 2})
    prune(m, cfg)
    layout = layout_of(m)
    assert layout["encoder_layout"] == [[4, 64], [4, 32]]  # heads whole, FFN 1/2 then 1/4
    assert layout["decoder_layout"] == [[2, 2, 128], [2, 1, 128]]  # decoder FFNs whole
    assert layout["conv_channels"] == 32
    cfg2 = dataclasses.replace(m.cfg, **layout)
    save_model_dir(m, cfg2, tmp_path / "pruned")
    loaded, _ = load_model_dir(tmp_path / "pruned")
    torch.testing.assert_close(logits(loaded, b), logits(m, b))
    assert fraction_for(0.5, "anything") == 0.5
    assert fraction_for({"encoder.layers.1": 0.5}, "encoder.layers.10.ffn") == 1.0  # dotted prefixes only


def test_named_layers_stay_whatever_their_scores(tmp_path):
    """layers: a list keeps those layers (Distil-Whisper's first-and-last cut), by index, in order."""
    m = tiny()
    layer1 = {k: v.clone() for k, v in m.decoder.layers[1].state_dict().items()}
    result = prune(m, PruneConfig(importance="magnitude", layers={"decoder.layers": [1]}))
    assert result.kept_layers == {"decoder.layers": [1]} and len(m.decoder.layers) == 1
    for k, v in m.decoder.layers[0].state_dict().items():
        assert torch.equal(v, layer1[k]), k
    save_model_dir(m, dataclasses.replace(m.cfg, **layout_of(m)), tmp_path / "cut")
    back, _ = load_model_dir(tmp_path / "cut")
    b = batch()
    torch.testing.assert_close(logits(back, b), logits(m, b))


def test_keeping_everything_changes_nothing():
    m, b = tiny(), batch()
    before = logits(m, b)
    result = prune(m, PruneConfig(importance="magnitude"))
    assert result.params_after == result.params_before
    torch.testing.assert_close(logits(m, b), before)


def test_bad_settings_are_named():
    with pytest.raises(ValueError, match="'heads'"):
        PruneConfig(heads=0.0)
    with pytest.raises(ValueError, match="'conv'"):
        PruneConfig(conv=1.5)
    with pytest.raises(ValueError, match="no GLU conv stack"):
        prune(torch.nn.Sequential(torch.nn.Linear(4, 4)), PruneConfig(importance="magnitude", conv=0.5))
    with pytest.raises(ValueError, match="'ffn.encoder'"):
        PruneConfig(ffn={"encoder": 0})
    with pytest.raises(ValueError, match="'heads'.*not a module path"):
        PruneConfig(heads={"": 0.5})
    with pytest.raises(ValueError, match="'ffn.encoder.layer' names no feed-forward block"):
        prune(tiny(), PruneConfig(importance="magnitude", ffn={"encoder.layer": 0.5}))
    with pytest.raises(ValueError, match="importance"):
        PruneConfig(importance="random")
    with pytest.raises(ValueError, match="layers.encoder.layers"):
        PruneConfig(layers={"encoder.layers": 0})
    for bad in ([], [0, 0], [-1], [True], [0.5]):
        with pytest.raises(ValueError, match="'layers.decoder.layers' lists the layers kept"):
            PruneConfig(layers={"decoder.layers": bad})
    m = tiny()
    with pytest.raises(ValueError, match="keeps layer 5 but the stack has 2"):
        prune(m, PruneConfig(importance="magnitude", layers={"decoder.layers": [0, 5]}))
    with pytest.raises(ValueError, match="keeps 5 layers but the stack has 2"):
        prune(m, PruneConfig(importance="magnitude", layers={"encoder.layers": 5}))
    with pytest.raises(ValueError, match="not an nn.ModuleList"):
        prune(m, PruneConfig(importance="magnitude", layers={"encoder": 1}))
    with pytest.raises(ValueError, match="calibration"):
        prune(m, PruneConfig(importance="taylor"))
