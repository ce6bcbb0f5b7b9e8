"""compress: ONNX export with dynamic axes, its check, the session wrapper, int8 and bf16."""

import numpy as np
import pytest
import torch
from torch import nn

from compress.export import ExportError, export_onnx, verify_onnx
from compress.files import atomic_path
from compress.quantize import quantize_onnx_int8, quantize_torch_int8, to_bf16
from compress.runtime import OrtSession, RuntimeSessionError

DYN = torch.export.Dim.DYNAMIC


class Toy(nn.Module):
    """Masked mean pooling after an MLP: a dynamic batch and length, an int and a bool output."""

    def __init__(self, dim: int = 64, hidden: int = 256):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.fc2 = nn.Linear(dim, hidden), nn.Linear(hidden, dim)

    def forward(self, x, lens):
        mask = torch.arange(x.shape[1])[None, :] < lens[:, None]  # (B, T) True at frames
        h = self.fc2(torch.relu(self.fc1(x))).masked_fill(~mask[..., None], 0.0)
        return h.sum(1) / lens[:, None].to(h.dtype), lens * 2, mask


def inputs(batch, frames, seed=0):
    g = torch.Generator().manual_seed(seed)
    lens = torch.linspace(frames, max(1, frames // 2), batch).long()
    return torch.randn(batch, frames, 64, generator=g), lens


@pytest.fixture(scope="module")
def toy_onnx(tmp_path_factory):
    path = tmp_path_factory.mktemp("export") / "toy.onnx"
    export_onnx(Toy(), inputs(2, 7), path, input_names=["x", "lens"], output_names=["pooled", "double", "mask"],
                dynamic_shapes=({0: DYN, 1: DYN}, {0: DYN}))
    return path


def test_export_keeps_batch_and_length_dynamic_in_one_file(toy_onnx):
    assert [p.name for p in toy_onnx.parent.iterdir()] == ["toy.onnx"]  # no external data, no temp file
    session = OrtSession(toy_onnx, threads=1)
    assert session.input_names == ["x", "lens"] and session.output_names == ["pooled", "double", "mask"]
    for batch, frames in [(1, 1), (3, 20), (5, 2)]:
        x, lens = inputs(batch, frames, seed=batch)
        got = session.run({"x": x.numpy(), "lens": lens.numpy()})
        with torch.no_grad():
            want = Toy()(x, lens)
        np.testing.assert_allclose(got[0], want[0].numpy(), atol=1e-5, rtol=0)
        assert np.array_equal(got[1], want[1].numpy()) and got[2].dtype == np.bool_
        assert np.array_equal(got[2], want[2].numpy())
    pooled, = session.run({"x": x.numpy(), "lens": lens.numpy()}, outputs=["pooled"])
    assert pooled.shape == (5, 64)


def test_verify_names_the_file_when_outputs_differ(toy_onnx):
    other = Toy()
    with torch.no_grad():
        other.fc2.bias.add_(0.1)
    with pytest.raises(ExportError, match=rf"{toy_onnx}: output 'pooled' differs from torch by 0.1"):
        verify_onnx(other, inputs(2, 7), toy_onnx, input_names=["x", "lens"])
    verify_onnx(Toy(), inputs(3, 11), toy_onnx, input_names=["x", "lens"])


def test_session_errors_name_the_file(toy_onnx, tmp_path):
    session = OrtSession(toy_onnx)
    x, lens = inputs(2, 5)
    with pytest.raises(RuntimeSessionError, match=rf"{toy_onnx}: missing input 'lens'; unknown input 'y'"):
        session.run({"x": x.numpy(), "y": lens.numpy()})
    with pytest.raises(RuntimeSessionError, match=rf"{toy_onnx}: .*"):
        session.run({"x": x.numpy(), "lens": lens.float().numpy()})  # wrong type
    with pytest.raises(RuntimeSessionError, match=rf"{toy_onnx}: has no input 'feats'; has an unexpected input 'x'"):
        session.check_names(["feats", "lens"])
    with pytest.raises(RuntimeSessionError, match="has no output 'logits'"):
        session.check_names(["x", "lens"], ["logits"])
    session.check_names(["x", "lens"], ["mask"])
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(RuntimeSessionError, match=rf"{junk}: cannot load"):
        OrtSession(junk)
    with pytest.raises(RuntimeSessionError, match=rf"{tmp_path / 'none.onnx'}: not found"):
        OrtSession(tmp_path / "none.onnx")


def test_export_failure_names_the_file_and_leaves_nothing(tmp_path):
    class Bad(nn.Module):
        def forward(self, x):
            return torch.tensor(x.tolist())  # data-dependent: not traceable

    with pytest.raises(ExportError, match=rf"{tmp_path / 'bad.onnx'}: the ONNX export failed"):
        export_onnx(Bad(), (torch.randn(3, 4),), tmp_path / "bad.onnx", input_names=["x"], output_names=["y"],
                    dynamic_shapes=({0: DYN},))
    assert list(tmp_path.iterdir()) == []


def test_atomic_path_keeps_the_old_file_on_failure(tmp_path):
    target = tmp_path / "a.onnx"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old" and [p.name for p in tmp_path.iterdir()] == ["a.onnx"]


@pytest.mark.parametrize("per_channel", [False, True])
def test_onnx_int8_is_smaller_and_close(toy_onnx, tmp_path, per_channel):
    out = quantize_onnx_int8(toy_onnx, tmp_path / "toy.int8.onnx", per_channel=per_channel)
    assert out.stat().st_size < 0.5 * toy_onnx.stat().st_size
    ops = {n.op_type for n in __import__("onnx").load(str(out)).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    x, lens = inputs(3, 9)
    got = OrtSession(out).run({"x": x.numpy(), "lens": lens.numpy()})
    with torch.no_grad():
        want = Toy()(x, lens)[0].numpy()
    assert np.abs(got[0] - want).max() < 0.1 * np.abs(want).max()
    with pytest.raises(ExportError, match=rf"{tmp_path / 'none.onnx'}: not found"):
        quantize_onnx_int8(tmp_path / "none.onnx", tmp_path / "x.onnx")


def test_torch_int8_and_bf16_keep_the_original():
    model = Toy().eval()
    x, lens = inputs(2, 6)
    with torch.no_grad():
        want = model(x, lens)[0]
        q = quantize_torch_int8(model)
        assert isinstance(model.fc1, nn.Linear) and not isinstance(q.fc1, nn.Linear)
        assert (q(x, lens)[0] - want).abs().max() < 0.1 * want.abs().max()
        b = to_bf16(model)
        assert b.fc1.weight.dtype == torch.bfloat16 and model.fc1.weight.dtype == torch.float32
        assert (b(x.bfloat16(), lens)[0].float() - want).abs().max() < 0.1 * want.abs().max()


def test_a_failed_check_leaves_no_file(tmp_path, monkeypatch):
    import compress.export as export

    def differs(module, args, path, **kwargs):
        raise ExportError(f"{path}: output 'pooled' differs from torch by 1 (tolerance 0.0001)")

    monkeypatch.setattr(export, "verify_onnx", differs)
    target = tmp_path / "toy.onnx"
    with pytest.raises(ExportError, match=rf"^{target}: output 'pooled' differs"):
        export_onnx(Toy(), inputs(2, 7), target, input_names=["x", "lens"], output_names=["pooled", "double", "mask"],
                    dynamic_shapes=({0: DYN, 1: DYN}, {0: DYN}))
    assert list(tmp_path.iterdir()) == []
