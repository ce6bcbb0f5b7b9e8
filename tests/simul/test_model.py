"""The zh->en translator's model: padding does not leak, the causal encoder is causal, the
wait-k mask hides the future, and it exports to ONNX with dynamic batch and lengths."""

import torch

from simul.model import MTConfig, MTModel, preset

V_SRC, V_TGT = 50, 40


def tiny(**kw) -> MTModel:
    torch.manual_seed(0)
    return MTModel(preset("tiny", V_SRC, V_TGT, dropout=0.0, attention_dropout=0.0, activation_dropout=0.0,
                          **kw)).eval()


def test_padding_does_not_change_the_output():
    model = tiny()
    src = torch.randint(4, V_SRC, (1, 7))
    prev = torch.randint(4, V_TGT, (1, 5))
    alone = model(src, torch.tensor([7]), prev)["logits"]
    padded = torch.cat([src, torch.zeros(1, 4, dtype=torch.long)], dim=1)
    with_pad = model(torch.cat([padded, torch.randint(4, V_SRC, (1, 11))]), torch.tensor([7, 11]),
                     torch.cat([prev, prev]))["logits"][:1]
    torch.testing.assert_close(alone, with_pad, atol=1e-5, rtol=0)


def test_wait_k_limit_hides_the_source_beyond_k_plus_i():
    model = tiny(causal_encoder=True)
    src = torch.randint(4, V_SRC, (1, 10))
    prev = torch.randint(4, V_TGT, (1, 4))
    limit = torch.arange(4) + 3  # target i sees 3 + i characters
    a = model(src, torch.tensor([10]), prev, limit)["logits"]
    changed = src.clone()
    changed[0, 7:] = 4  # beyond every query's limit (3 + 3 = 6 characters)
    b = model(changed, torch.tensor([10]), prev, limit)["logits"]
    torch.testing.assert_close(a, b)
    changed[0, 4] = 5  # seen by queries 2 and 3 only
    c = model(changed, torch.tensor([10]), prev, limit)["logits"]
    torch.testing.assert_close(a[:, :2], c[:, :2])
    assert not torch.allclose(a[:, 2:], c[:, 2:])


class _Export(torch.nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, src, src_lens, prev):
        return self.model(src, src_lens, prev)["logits"]


def _inputs(batch, s, u):
    g = torch.Generator().manual_seed(batch * 100 + s)
    lens = torch.linspace(s, max(1, s // 2), batch).long()
    return torch.randint(4, V_SRC, (batch, s), generator=g), lens, torch.randint(4, V_TGT, (batch, u), generator=g)


def test_onnx_export_with_dynamic_axes(tmp_path):
    import onnxruntime as ort

    wrapper = _Export(tiny())
    dyn = torch.export.Dim.DYNAMIC
    path = tmp_path / "mt.onnx"
    torch.onnx.export(wrapper, _inputs(2, 9, 5), str(path), dynamo=True, input_names=["src", "src_lens", "prev"],
                      output_names=["logits"],
                      dynamic_shapes=({0: dyn, 1: dyn}, {0: dyn}, {0: dyn, 1: dyn}))
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(1, 3, 1), (3, 20, 7)]:
        src, lens, prev = _inputs(*shape)
        (got,) = sess.run(None, {"src": src.numpy(), "src_lens": lens.numpy(), "prev": prev.numpy()})
        with torch.no_grad():
            want = wrapper(src, lens, prev)
        torch.testing.assert_close(torch.from_numpy(got), want, atol=1e-4, rtol=0)


def test_config_checks():
    import pytest

    with pytest.raises(ValueError, match="multiple of 'heads'"):
        MTConfig(src_vocab_size=10, vocab_size=10, d_model=30, heads=4)
