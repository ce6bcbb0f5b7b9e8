"""The simultaneous translator on ONNX Runtime (speech.onnx's text family), through the
compression family's quantize and open."""

from pathlib import Path

import pytest

from compress.family import CompressError
from simul.compressing import SimulFamily
from simul.data import load_split
from simul.translator import Translator

ROOT = Path(__file__).resolve().parents[2]


def test_the_translator_runs_on_onnx(tiny_simul, tmp_path, one_thread):
    family = SimulFamily(corpus=str(tiny_simul.corpus), docs=3, segmenter=str(tiny_simul.segmenter),
                         train_config=str(ROOT / "simul/configs/tiny.yaml"))
    fp32 = family.quantize(tiny_simul.model, tmp_path / "onnx", {"runtime": "onnx"})
    assert fp32["runtime"] == "onnx" and all(Path(f).exists() for f in fp32["files"])
    onnx_tr = family.open({**fp32, "name": "fp32"}, threads=1)
    torch_tr = Translator(tiny_simul.model)
    sources = [zh for d in load_split(str(tiny_simul.corpus), "general", "test")[:3] for zh in d.zh]
    want = torch_tr.translate(sources, beam=4, length_penalty=0.5)
    assert any(len(w) > 2 for w in want)  # it translates something
    assert onnx_tr.translate(sources, beam=4, length_penalty=0.5) == want
    # what the policies call: a committed prefix continued, one greedy step on a source prefix
    committed = [w[:2] for w in want]
    assert onnx_tr.translate(sources, committed=committed) == torch_tr.translate(sources, committed=committed)
    for zh in sources[:4]:
        assert onnx_tr.next_token(zh[:3], want[0][:1]) == torch_tr.next_token(zh[:3], want[0][:1])

    # int8: quantized into the same folder (resumable), measured like any variant
    int8 = family.quantize(tiny_simul.model, tmp_path / "onnx", {"runtime": "onnx-int8"})
    tr = family.open({**int8, "name": "int8"}, threads=1)
    outputs = family.infer(tr, family.test_items({})[:6])
    assert len(outputs) == 6 and all(isinstance(o, str) for o in outputs)
    # the policy fixes how a segment is decoded: a variant asking otherwise is refused by name
    with pytest.raises(CompressError, match="int8 greedy"):
        family.open({**int8, "name": "int8 greedy", "decode": {"beam": 1}}, threads=1)
