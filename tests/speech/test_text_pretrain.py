"""Text pretraining of the ST decoder (speech.text_pretrain) on a tiny hand-written corpus."""

import json

import pytest
import torch

from speech.config import ConfigError
from speech.decode import DecodingOptions, greedy_search
from speech.loop import list_checkpoints
from speech.model import S2TModel
from speech.model_config import preset
from speech.text_model import load_mt_model
from speech.text_pretrain import (TextPretrainConfig, add_noise, make_batch, read_pairs, to_denoising, to_lang_pairs,
                                  train)
from speech.tokenizer import Tokenizer
from speech.train import init_decoder_from

from builders import PAIRS


def config(text_home, out, **kw):
    base = dict(corpus=str(text_home / "text"), langs=["de", "fr"], out=str(out), model="tiny", encoder_layers=1,
                vocab_size=200, lr=0.005, warmup_updates=10, max_updates=150, save_interval_updates=50,
                validate_interval_updates=50, average_last=1, dev_bleu_max=2, max_tokens=400, threads=1)
    return TextPretrainConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    from builders import write_text_corpus

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    home = write_text_corpus(tmp_path_factory.mktemp("home"))
    final = train(config(home, home / "mt", denoise_share=0.2, max_updates=250))
    torch.set_num_threads(n)
    return home, final


def test_it_learns_the_training_pairs(pretrained):
    home, final = pretrained
    model, conf = load_mt_model(final)
    assert conf["task"] == "mt" and conf["languages"] == ["de", "fr"]
    assert {"bleu_de", "bleu_fr"} == set(conf["dev_scores"])
    state = json.loads((list_checkpoints(home / "mt/checkpoints")[-1] / "state.json").read_text())
    losses = [h["nll"] for h in state["history"] if "nll" in h]
    assert losses[-1] < 0.3 * losses[0]
    # the decoder has memorized the pairs: greedy decoding of a train source gives its target
    tok = Tokenizer(final / "spm.model")
    cfg = config(home, home / "mt")
    rows = read_pairs(cfg, "train")
    right = 0
    for lang in ("de", "fr"):
        ex = to_lang_pairs(lang, rows[lang], tok)
        b = make_batch(ex, list(range(len(ex.src))))
        enc = model.encode(b["src"], b["src_lens"])
        hyps = greedy_search([model], [enc], [tok.prefix(lang)] * len(ex.src), DecodingOptions(beam_size=1))
        right += sum(tok.decode(h.tokens) == ref for h, ref in zip(hyps, ex.refs))
    assert right >= 0.75 * 2 * len(PAIRS["train"])


def test_it_learns_to_write_english_under_the_en_tag(pretrained):
    """The denoising batches taught <lang:en>: a clean English source comes back as itself."""
    home, final = pretrained
    model, _ = load_mt_model(final)
    tok = Tokenizer(final / "spm.model")
    english = list(dict.fromkeys(row[0] for row in PAIRS["train"]))
    ex = to_denoising(english, tok)
    assert all(t[0] == tok.lang_tag("en") and t[1:] == s for s, t in zip(ex.src, ex.tgt))
    b = make_batch(ex, list(range(len(ex.src))))
    hyps = greedy_search([model], [model.encode(b["src"], b["src_lens"])], [tok.prefix("en")] * len(ex.src),
                         DecodingOptions(beam_size=1))
    right = sum(tok.decode(h.tokens) == ref for h, ref in zip(hyps, english))
    assert right >= 0.5 * len(english)
    # and the translation directions still translate rather than copy the English
    de = to_lang_pairs("de", read_pairs(config(home, home / "mt"), "train")["de"], tok)
    b = make_batch(de, list(range(len(de.src))))
    hyps = greedy_search([model], [model.encode(b["src"], b["src_lens"])], [tok.prefix("de")] * len(de.src),
                         DecodingOptions(beam_size=1))
    assert sum(tok.decode(h.tokens) == en for h, en in zip(hyps, de.srcs)) < 0.25 * len(de.src)


def test_the_noise_drops_and_moves_pieces_only_a_little():
    src = list(range(10, 60)) + [2]  # 50 pieces + eos
    gen = torch.Generator().manual_seed(0)
    out = add_noise(src, 0.1, 3, gen)
    assert out[-1] == 2 and len(set(out)) == len(out) and set(out) <= set(src)
    assert 30 <= len(out) - 1 < 50  # about 10% dropped
    kept = sorted(out[:-1])
    assert all(abs(out.index(p) - kept.index(p)) <= 3 for p in kept)  # displacement bounded by k
    assert out != src
    # the same generator state gives the same noise (exact resume); nothing dropped, nothing moved
    assert add_noise(src, 0.1, 3, torch.Generator().manual_seed(0)) == out
    assert add_noise(src, 0.0, 0, gen) == src
    assert add_noise([7, 2], 0.99, 3, gen) == [7, 2]  # at least one piece is kept


def test_the_decoder_has_the_speech_presets_shape(pretrained):
    _, final = pretrained
    tok = Tokenizer(final / "spm.model")
    assert set(tok.languages) == {"de", "fr", "en"}  # <lang:en>: the ST model also transcribes
    text_model, _ = load_mt_model(final)
    st = S2TModel(preset("tiny", vocab_size=tok.vocab_size))
    before = {k: v.clone() for k, v in st.state_dict().items() if k.startswith("encoder.")}
    n = init_decoder_from(st, str(final))
    decoder = {k: v for k, v in text_model.state_dict().items() if k.startswith("decoder.")}
    assert n == len(decoder) > 10
    for k, v in decoder.items():
        assert torch.equal(st.state_dict()[k], v), k
    for k, v in before.items():  # the encoder is left alone
        assert torch.equal(st.state_dict()[k], v), k
    other = S2TModel(preset("tiny", vocab_size=tok.vocab_size, decoder_layers=3))
    with pytest.raises(ConfigError, match="decoder of another shape"):
        init_decoder_from(other, str(final))


def test_bad_recipes_and_corpora_are_named(text_home, tmp_path):
    with pytest.raises(ConfigError, match="source language"):
        config(text_home, tmp_path / "x", langs=["de", "en"])
    with pytest.raises(ConfigError, match="denoise_share"):
        config(text_home, tmp_path / "x", denoise_share=1.0)
    with pytest.raises(ConfigError, match="en-it"):
        read_pairs(config(text_home, tmp_path / "x", langs=["de", "it"]), "train")
    bad = text_home / "text" / "en-fr" / "train.tsv"
    bad.write_text("en\tfr\n" + "Open\tOuvrir\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="train.tsv"):
        read_pairs(config(text_home, tmp_path / "x"), "train")
    with pytest.raises(ConfigError, match="no spm.model"):
        init_decoder_from(S2TModel(preset("tiny", vocab_size=100)), str(tmp_path))
