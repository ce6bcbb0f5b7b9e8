"""S2T models on ONNX Runtime: the graphs against torch, the search unchanged, int8, the CLI."""

import json
import logging

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch

from compress.prune import prune_heads
from compress.runtime import RuntimeSessionError
from interpres.cli import main
from speech import onnx as sonnx
from speech.decode import DecodingOptions, encode, repeat_states, search
from speech.model import Conv1dSubsampler, S2TModel
from speech.onnx import EncoderGraph, EncoderOutput, OnnxModelError, OnnxS2TModel, export_s2t
from speech.translate import load_translator

from builders import SPLIT, build_eval_corpus, make_model_dir
from s2t import VOCAB, features, tiny_model

DE, FR = 4, 5  # two "language tags"


def tiny_pruned_model() -> S2TModel:
    """Untied output embeddings (a random tied model mostly repeats its input token) and
    decoder layers with different head counts."""
    model = tiny_model(0)
    prune_heads(model.decoder.layers[0].self_attn, [0, 1])
    prune_heads(model.decoder.layers[1].encoder_attn, [0, 1, 2])
    prune_heads(model.encoder.layers[0].self_attn, [0])
    return model


@pytest.fixture(scope="module")
def exported(tmp_path_factory, one_thread):
    model = tiny_pruned_model()
    folder = export_s2t(model, tmp_path_factory.mktemp("onnx") / "tiny", quantize="int8")
    return model, folder


@pytest.fixture(scope="module")
def twin(tmp_path_factory, one_thread):
    """A second model, for ensembles: float32 graphs only."""
    model = tiny_model(1)
    return model, export_s2t(model, tmp_path_factory.mktemp("onnx") / "twin", quantize=None)


def test_the_folder_describes_its_graphs(exported):
    model, folder = exported
    assert sorted(p.name for p in folder.iterdir()) == ["ctc_head.safetensors", "decoder.int8.onnx", "decoder.onnx",
                                                         "encoder.int8.onnx", "encoder.onnx", "onnx.json"]
    assert not list(folder.parent.glob(".*"))  # no temporary folder left
    index = json.loads((folder / "onnx.json").read_text())
    assert index["format"] == sonnx.FORMAT and index["model"]["vocab_size"] == VOCAB
    assert [(d["self_heads"], d["cross_heads"]) for d in index["decoder_layers"]] == [(2, 4), (4, 3)]
    assert index["graphs"]["int8"]["per_channel"] is True
    assert index["io"]["decoder"]["inputs"][:4] == ["tokens", "enc_mask", "cross_k_0", "cross_v_0"]
    assert index["io"]["decoder"]["outputs"][-1] == "present_v_1"
    for name in ("encoder", "decoder"):
        assert (folder / f"{name}.int8.onnx").stat().st_size < 0.7 * (folder / f"{name}.onnx").stat().st_size
    # float attention masks: no attention pays the exporter's IsNaN/Where guard of a boolean mask
    for graph in ("encoder.onnx", "decoder.onnx", "encoder.int8.onnx", "decoder.int8.onnx"):
        ops = {n.op_type for n in onnx.load(str(folder / graph)).graph.node}
        assert "IsNaN" not in ops and "Softmax" in ops, graph
        # the conv subsampler is exported as matmuls, which int8 quantization covers
        assert not ops & {"Conv", "ConvInteger"}, graph


@pytest.mark.parametrize("kernels", [[5, 5], [3, 5, 7]])
def test_unfolded_subsampler_is_the_conv_subsampler(kernels):
    torch.manual_seed(0)
    sub = Conv1dSubsampler(12, 16, 10, kernels).eval()
    unfolded = sonnx.UnfoldedSubsampler(sub)
    for lens in ([37], [40, 23, 9], [2, 1], [64, 63]):
        x = torch.randn(len(lens), max(lens), 12)
        for row, n in enumerate(lens):
            x[row, n:] = 1e3  # padding must not leak into the output
        lens_t = torch.tensor(lens)
        with torch.no_grad():
            want, want_lens = sub(x, lens_t)
            got, got_lens = unfolded(x, lens_t)
        assert torch.equal(got_lens, want_lens) and got.shape == want.shape
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    sub.conv_layers[0].stride = (1,)
    with pytest.raises(ValueError, match="stride 2"):
        sonnx.UnfoldedSubsampler(sub)


def test_graphs_match_torch_with_dynamic_batch_and_lengths(exported):
    model, folder = exported
    onnx_model = OnnxS2TModel(folder, precision="fp32")
    for lens in ([37], [40, 23, 9], [5, 64]):
        x, feat_lens = features(lens, seed=len(lens))
        with torch.no_grad():
            want = EncoderGraph(model)(x, feat_lens)
        got = onnx_model.encoder.run({"features": x.numpy(), "feat_lens": feat_lens.numpy()})
        assert len(got) == len(want) == 3 + 2 * len(model.decoder.layers)
        for g, w in zip(got, want):
            assert g.shape == tuple(w.shape) and g.dtype == w.numpy().dtype
            np.testing.assert_allclose(g, w.numpy(), atol=1e-4, rtol=0)
        # cross keys leave the encoder transposed (B, H, head_dim, S), values as (B, H, S, head_dim)
        layer = model.decoder.layers[0].encoder_attn
        s = got[0].shape[1]
        assert got[3].shape == (len(lens), layer.heads, layer.head_dim, s)
        assert got[4].shape == (len(lens), layer.heads, s, layer.head_dim)

        # the decoder: a 2-token prefix from an empty cache (past length 0), then one token at a time
        enc_out, _, enc_mask = model.encode(x, feat_lens)
        o_enc, _, o_mask = onnx_model.encode(x, feat_lens)
        tokens = torch.randint(4, VOCAB, (len(lens), 5), generator=torch.Generator().manual_seed(0))
        cache, o_cache = model.decoder.new_cache(), onnx_model.decoder.new_cache()
        for end in (2, 3, 4, 5):
            with torch.no_grad():
                want_logits = model.decoder(tokens[:, :end], enc_out, enc_mask, cache)
            got_logits = onnx_model.decoder(tokens[:, :end], o_enc, o_mask, o_cache)
            assert got_logits.shape == want_logits.shape == (len(lens), 2 if end == 2 else 1, VOCAB)
            torch.testing.assert_close(got_logits, want_logits, atol=1e-4, rtol=0)
            assert len(o_cache) == len(cache) == end
        # teacher forcing without a cache
        torch.testing.assert_close(onnx_model.decoder(tokens, o_enc, o_mask), model.decoder(tokens, enc_out, enc_mask),
                                   atol=1e-4, rtol=0)


def test_encoder_output_keeps_its_rows_through_row_selections(exported):
    _, folder = exported
    onnx_model = OnnxS2TModel(folder, precision="fp32")
    enc_out, _, enc_mask = onnx_model.encode(*features([20, 11]))
    picked = enc_out.repeat_interleave(3, dim=0).index_select(0, torch.tensor([5, 0, 2]))
    assert isinstance(picked, EncoderOutput) and picked.rows.tolist() == [1, 0, 0]
    assert torch.equal(picked, torch.cat([enc_out[1:2], enc_out[0:1], enc_out[0:1]]))
    assert not isinstance(enc_out + 1, EncoderOutput) and not isinstance(enc_out[:, :2], EncoderOutput)
    with pytest.raises(ValueError, match="enc_out must come from OnnxS2TModel.encode"):
        onnx_model.decoder(torch.tensor([[DE], [FR]]), torch.zeros(2, 5, 64), enc_mask)


@pytest.mark.parametrize("beam", [1, 3])
def test_search_gives_the_same_tokens_as_torch(exported, twin, beam):
    """Greedy and beam search, a batch with padding decoded into two languages, and an ensemble."""
    model, folder = exported
    onnx_model, onnx_twin = OnnxS2TModel(folder, precision="fp32"), OnnxS2TModel(twin[1], precision="fp32")
    x, lens = features([48, 31, 17, 6], seed=3)
    prefix = [[tag] for _ in range(4) for tag in (DE, FR)]
    for models, onnx_models, ctc in (([model], [onnx_model], 0.0), ([model, twin[0]], [onnx_model, onnx_twin], 0.0),
                                     ([model], [onnx_model], 0.4), ([model, twin[0]], [onnx_model, onnx_twin], 0.4)):
        # ctc_weight 0.4: joint CTC/attention, the CTC head exported beside the graphs
        opts = DecodingOptions(beam_size=beam, max_len_b=25, nbest=beam, ctc_weight=ctc)
        want = search(models, repeat_states(encode(models, x, lens), 2), prefix, opts)
        got = search(onnx_models, repeat_states(encode(onnx_models, x, lens), 2), prefix, opts)
        assert [[h.tokens for h in r.nbest] for r in got] == [[h.tokens for h in r.nbest] for r in want]
        assert any(len(r.tokens) > 3 for r in want)  # the test decodes something
        for g, w in zip(got, want):
            assert g.score == pytest.approx(w.score, abs=1e-3)


def test_int8_runs_and_mostly_agrees(exported):
    model, folder = exported
    int8 = OnnxS2TModel(folder, precision="int8")
    lens = [60, 52, 47, 41, 33, 28, 20, 12]
    x, feat_lens = features(lens, seed=5)
    prefix = [[DE]] * len(lens)
    opts = DecodingOptions(beam_size=1, max_len_b=15)
    want = search([model], encode([model], x, feat_lens), prefix, opts)
    got = search([int8], encode([int8], x, feat_lens), prefix, opts)
    same = sum(g.tokens == w.tokens for g, w in zip(got, want))
    first = sum(g.tokens[:1] == w.tokens[:1] for g, w in zip(got, want))
    assert same >= len(lens) // 2 and first >= len(lens) - 1, (same, first)


def test_folder_errors_name_the_file(exported, twin, tmp_path):
    _, folder = exported
    with pytest.raises(OnnxModelError, match=rf"{tmp_path / 'onnx.json'}: not found"):
        OnnxS2TModel(tmp_path)
    (tmp_path / "onnx.json").write_text(json.dumps({"format": 0}))
    with pytest.raises(OnnxModelError, match=rf"{tmp_path / 'onnx.json'}: export format 0, this version reads"):
        OnnxS2TModel(tmp_path)
    fp32_only = tmp_path / "fp32"
    fp32_only.mkdir()
    for f in twin[1].iterdir():
        (fp32_only / f.name).write_bytes(f.read_bytes())
    with pytest.raises(OnnxModelError, match=rf"{fp32_only / 'onnx.json'}: no int8 graphs"):
        OnnxS2TModel(fp32_only, precision="int8")
    (fp32_only / "decoder.onnx").write_bytes((folder / "encoder.onnx").read_bytes())
    with pytest.raises(RuntimeSessionError, match=rf"{fp32_only / 'decoder.onnx'}: has no input 'tokens'"):
        OnnxS2TModel(fp32_only, precision="fp32")


# --------------------------------------------------------------------------- translate and the CLI


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return make_model_dir(tmp_path_factory.mktemp("onnx_cli") / "model")


@pytest.fixture
def home(tmp_path_factory, monkeypatch):
    """One $INTERPRES_HOME for the tests below, so the model directory is exported once."""
    path = tmp_path_factory.getbasetemp() / "onnx_home"
    monkeypatch.setenv("INTERPRES_HOME", str(path))
    return path


@pytest.fixture(scope="module")
def wav(tmp_path_factory):
    path = tmp_path_factory.mktemp("audio") / "talk.wav"
    sr = 16000
    t = np.arange(2 * sr) / sr
    wave = 1e-3 * np.random.default_rng(0).standard_normal(len(t))
    on = (t >= 0.3) & (t < 1.5)
    wave[on] += 0.5 * np.sin(2 * np.pi * 440 * t[on])
    sf.write(path, wave.astype(np.float32), sr)
    return path


def test_translate_runtime_onnx_exports_once_into_the_cache(model_dir, wav, home, monkeypatch, capsys, caplog):
    assert main(["translate", str(wav), "--tgt", "de,fr", "--model", str(model_dir), "--runtime", "onnx-int8",
                 "--format", "json", "--beam", "2"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [r["lang"] for r in out] == ["de", "fr"] and all(len(r["segments"]) == 1 for r in out)
    (cached,) = (home / "onnx").iterdir()
    assert cached.name == sonnx.model_dir_hash(model_dir)[:16] and (cached / "decoder.int8.onnx").is_file()

    # later loads reuse the export; fp32 decodes exactly as torch does (a tied output embedding here)
    monkeypatch.setattr(sonnx, "export_s2t", lambda *a, **k: pytest.fail("exported again"))
    translator = load_translator(model_dir, runtime="onnx")
    assert isinstance(translator.models[0], OnnxS2TModel) and translator.models[0].folder == cached
    torch_translator = load_translator(model_dir)
    feats = [torch_translator.features(np.random.default_rng(i).standard_normal(16000 * (i + 1)) * 0.1)
             for i in range(3)]
    for beam in (1, 2):
        opts = DecodingOptions(beam_size=beam, max_len_b=12)
        want = [[r.tokens for r in per] for per in torch_translator.decode(feats, ["de", "fr"], opts)]
        got = [[r.tokens for r in per] for per in translator.decode(feats, ["de", "fr"], opts)]
        assert got == want

    # an export inside the model directory wins over the cache
    own = model_dir / "onnx"
    own.mkdir()
    for f in cached.iterdir():
        (own / f.name).write_bytes(f.read_bytes())
    try:
        assert load_translator(model_dir, runtime="onnx-int8").models[0].folder == own
        index = json.loads((own / "onnx.json").read_text())
        index["source"]["sha256"] = "0" * 64
        (own / "onnx.json").write_text(json.dumps(index))
        with caplog.at_level(logging.WARNING):
            assert load_translator(model_dir, runtime="onnx-int8").models[0].folder == cached
        assert f"{own / 'onnx.json'}: exported from other weights" in caplog.text
        assert main(["transcribe", str(wav), "--model", str(model_dir), "--runtime", "onnx-int8"]) == 2
        assert "cannot transcribe English" in capsys.readouterr().err
    finally:
        for f in own.iterdir():
            f.unlink()
        own.rmdir()


def test_eval_mustc_runtime_onnx(model_dir, home, tmp_path, capsys, caplog):
    corpus = build_eval_corpus(tmp_path / "mustc", pairs=("en-de",))
    out = tmp_path / "eval"
    args = ["eval", "mustc", "--root", str(corpus), "--pairs", "en-de", "--split", SPLIT, "--model", str(model_dir),
            "--beam", "2", "--batch-frames", "250", "--out", str(out)]
    assert main([*args, "--runtime", "onnx-int8"]) == 0
    report = json.loads((out / "scores.json").read_text())
    assert report["runtime"] == "onnx-int8" and "bleu" in report["pairs"]["en-de"]
    hyps = (out / "en-de" / f"{SPLIT}.hyp.de").read_text()
    log = (out / "en-de" / f"{SPLIT}.progress.jsonl").read_text().splitlines()
    assert json.loads(log[0])["settings"]["runtime"] == "onnx-int8"
    # the runtime is part of what a log was made with: torch starts over, and writes its own hypotheses
    with caplog.at_level(logging.WARNING):
        assert main([*args, "--runtime", "torch"]) == 0
    assert "made with other settings (runtime differ)" in caplog.text
    assert len((out / "en-de" / f"{SPLIT}.hyp.de").read_text().splitlines()) == len(hyps.splitlines())


def test_text_models_export_alike(tmp_path, one_thread):
    """The text family (speech.text_model.MTModel: the simultaneous translator, the ST
    decoder's pretraining): token ids in, the same graphs and search out."""
    from speech.checkpoint import save_model_dir
    from speech.text_model import MTConfig, MTModel

    torch.manual_seed(0)
    cfg = MTConfig(src_vocab_size=40, vocab_size=VOCAB, d_model=64, encoder_layers=2, decoder_layers=2, heads=4,
                   ffn_dim=128, share_decoder_input_output_embed=False)
    model = MTModel(cfg).eval()
    save_model_dir(model, cfg, tmp_path / "mt")
    folder = export_s2t(tmp_path / "mt", tmp_path / "onnx", quantize="int8")  # a model directory of this family
    index = json.loads((folder / "onnx.json").read_text())
    assert index["family"] == "text" and index["io"]["encoder"]["inputs"] == ["src_tokens", "src_lens"]
    assert "ctc_head" not in index
    g = torch.Generator().manual_seed(4)
    src = torch.randint(4, 40, (3, 13), generator=g)
    lens = torch.tensor([13, 9, 4])
    src[1, 9:], src[2, 4:] = 0, 0
    onnx_model = OnnxS2TModel(folder, precision="fp32")
    assert onnx_model.family == "text" and onnx_model.cfg == cfg
    for beam in (1, 3):
        opts = DecodingOptions(beam_size=beam, max_len_b=20)
        want = search([model], encode([model], src, lens), [[1]] * 3, opts)
        got = search([onnx_model], encode([onnx_model], src, lens), [[1]] * 3, opts)
        assert [r.tokens for r in got] == [r.tokens for r in want]
        assert any(len(r.tokens) > 3 for r in want)
    int8 = OnnxS2TModel(folder, precision="int8")
    got = search([int8], encode([int8], src, lens), [[1]] * 3, DecodingOptions(beam_size=1, max_len_b=20))
    assert sum(g.tokens[:1] == w.tokens[:1] for g, w in zip(got, want)) >= 2  # int8 mostly agrees
