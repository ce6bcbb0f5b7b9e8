"""Text pretraining of the ST decoder (speech.text_pretrain) on a tiny hand-written corpus."""

import json

import pytest
import torch

from speech.config import ConfigError
from speech.decode import DecodingOptions, greedy_search
from speech.loop import list_checkpoints
from speech.model import S2TModel, preset
from speech.text_model import load_mt_model
from speech.text_pretrain import TextPretrainConfig, make_batch, read_pairs, to_lang_pairs, train
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
    final = train(config(home, home / "mt"))
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
    with pytest.raises(ConfigError, match="en-it"):
        read_pairs(config(text_home, tmp_path / "x", langs=["de", "it"]), "train")
    bad = text_home / "text" / "en-fr" / "train.tsv"
    bad.write_text("en\tfr\n" + "Open\tOuvrir\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="train.tsv"):
        read_pairs(config(text_home, tmp_path / "x"), "train")
    with pytest.raises(ConfigError, match="no spm.model"):
        init_decoder_from(S2TModel(preset("tiny", vocab_size=100)), str(tmp_path))
