"""The training recipe end to end on a tiny synthesized corpus and the tiny model."""

import dataclasses
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from compress.distill import SeqKDError, degenerate, sentence_chrf
from speech.config import ConfigError, load_config
from speech.data.speech_corpus import SpeechCorpusConfig, build_speech_corpus
from speech.checkpoint import load_model_dir
from speech.loop import (ActiveClock, LoopConfig, average_checkpoints, list_checkpoints, load_checkpoint,
                         resolve_device, save_checkpoint, to_device)
from speech.features import FbankConfig
from speech.tokenizer import Tokenizer
from speech.train import TrainConfig, build_lang_data, init_encoder_from, read_texts, seq_kd_targets, train

from builders import write_text_corpus

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("espeak-ng") is None or shutil.which("sox") is None, reason="needs espeak-ng and sox"),
]
ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "speech/configs"


@pytest.fixture(scope="module")
def home(tmp_path_factory):
    """A tiny MuST-C-layout corpus ('t') with de, fr and en-asr, synthesized once."""
    home = write_text_corpus(tmp_path_factory.mktemp("home"))
    build_speech_corpus(SpeechCorpusConfig(
        name="t", langs=["de", "fr"], train_per_lang=6, dev_per_lang=2, test_per_lang=3, asr_train=4,
        asr_dev=2, asr_test=2, workers=2, train_voices=["espeak:en-us+m1", "flite:kal16"],
        heldout_voices=["espeak:en-gb-scotland+m7"]), home=home)
    return home


def cfg_for(home, task, out, *overrides):
    os.environ["INTERPRES_HOME"] = str(home)
    return load_config(TrainConfig, TINY / f"{task}_tiny.yaml", ["corpus=t", f"out={out}", "threads=1", *overrides])


def run_cli(home, *args, env_extra=None):
    env = {**os.environ, "INTERPRES_HOME": str(home), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "interpres", *args], capture_output=True, text=True, env=env, cwd=ROOT)


def test_asr_then_st_from_the_asr_encoder(home, tmp_path):
    asr_dir = train(cfg_for(home, "asr", tmp_path / "asr", "max_updates=30"))
    asr, conf = load_model_dir(asr_dir)
    assert conf["task"] == "asr" and conf["languages"] == ["en"] and "wer_en" in conf["dev_scores"]
    assert (asr_dir / "spm.model").exists() and conf["averaged"] == ["checkpoint_20", "checkpoint_30"]
    history = [h for h in __import__("json").loads(
        (list_checkpoints(tmp_path / "asr/checkpoints")[-1] / "state.json").read_text())["history"] if "loss" in h]
    assert history[-1]["loss"] < history[0]["loss"]  # it learns

    st_cfg = cfg_for(home, "st", tmp_path / "st", f"init_encoder={asr_dir}", "max_updates=10")
    from speech.model import S2TModel
    from speech.model_config import preset
    from speech.tokenizer import Tokenizer

    fresh = S2TModel(preset("tiny", vocab_size=300))
    assert init_encoder_from(fresh, str(asr_dir)) > 10
    for k, v in asr.state_dict().items():
        if k.startswith("encoder."):
            assert torch.equal(fresh.state_dict()[k], v)
    st_dir = train(st_cfg)
    st, conf = load_model_dir(st_dir)
    assert conf["languages"] == ["de", "fr", "en"]
    tok = Tokenizer(st_dir / "spm.model")
    assert set(tok.languages) >= {"de", "fr", "en"}
    assert {"bleu_de", "bleu_fr", "wer_en"} <= set(conf["dev_scores"])


def test_st_starts_from_a_text_pretrained_decoder(home, tmp_path):
    mt_args = ["train", "mt", "corpus=text", "langs=[de,fr]", "model=tiny", "encoder_layers=1", "vocab_size=200",
               "max_updates=20", "warmup_updates=5", "save_interval_updates=10", "validate_interval_updates=10",
               "average_last=1", "dev_bleu_max=2", "threads=1"]
    r = run_cli(home, *mt_args, f"out={tmp_path / 'mt'}")
    assert r.returncode == 0, r.stderr
    mt = tmp_path / "mt" / "model"
    st_dir = train(cfg_for(home, "st", tmp_path / "st", f"init_decoder={mt}", "max_updates=2", "average_last=1"))
    # the decoder's vocabulary comes with it, byte for byte
    assert (st_dir / "spm.model").read_bytes() == (mt / "spm.model").read_bytes()
    _, conf = load_model_dir(st_dir)
    assert conf["recipe"]["init_decoder"] == str(mt) and conf["languages"] == ["de", "fr", "en"]
    # a run begun with one vocabulary refuses a decoder trained with another
    r = run_cli(home, *mt_args, f"out={tmp_path / 'mt2'}", "vocab_size=150", "max_updates=1")
    assert r.returncode == 0, r.stderr
    with pytest.raises(ConfigError, match="differs from"):
        train(cfg_for(home, "st", tmp_path / "st", f"init_decoder={tmp_path / 'mt2' / 'model'}", "max_updates=4"))
    with pytest.raises(ConfigError, match="init excludes"):
        cfg_for(home, "st", tmp_path / "x", f"init_decoder={mt}", f"init={st_dir}")


def test_killed_run_resumes_to_the_same_weights(home, tmp_path):
    args = ["train", "st", str(TINY / "st_tiny.yaml"), "corpus=t", "threads=1", "max_updates=12",
            "save_interval_updates=4", "validate_interval_updates=6", "average_last=1"]
    a = run_cli(home, *args, f"out={tmp_path / 'a'}")
    assert a.returncode == 0, a.stderr
    b = run_cli(home, *args, f"out={tmp_path / 'b'}", env_extra={"INTERPRES_TEST_KILL_AT_UPDATE": "8"})
    assert b.returncode == -signal.SIGKILL
    assert not (tmp_path / "b/model").exists() and (tmp_path / "b/checkpoints/checkpoint_8").exists()
    b2 = run_cli(home, *args, f"out={tmp_path / 'b'}")
    assert b2.returncode == 0, b2.stderr
    wa = load_file(str(tmp_path / "a/model/model.safetensors"))
    wb = load_file(str(tmp_path / "b/model/model.safetensors"))
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    # a finished run started again does nothing more
    again = run_cli(home, *args, f"out={tmp_path / 'a'}")
    assert again.returncode == 0 and "already finished (checkpoint_12)" in again.stderr


def test_a_killed_lora_run_of_an_imported_whisper_resumes_to_the_same_weights(home, tmp_path):
    """The teacher's recipe (Whisper init, adapters, bf16) killed mid-run ends as an uninterrupted run."""
    pytest.importorskip("ctranslate2")
    from whisper_fixtures import tiny_ct2_whisper
    from speech.whisper import import_whisper

    base = import_whisper(str(tiny_ct2_whisper(tmp_path / "ct2")), tmp_path / "base", pad_to_s=0.0)
    args = ["train", "st", str(TINY / "st_tiny.yaml"), "corpus=t", "threads=1", "max_updates=8", f"init={base}",
            "lora.rank=2", "lora.modules=[decoder]", "precision=bf16", "ctc_weight=0", "specaugment=none",
            "save_interval_updates=4", "validate_interval_updates=4", "average_last=1", "dev_bleu_max=0"]
    a = run_cli(home, *args, f"out={tmp_path / 'a'}")
    assert a.returncode == 0, a.stderr
    b = run_cli(home, *args, f"out={tmp_path / 'b'}", env_extra={"INTERPRES_TEST_KILL_AT_UPDATE": "4"})
    assert b.returncode == -signal.SIGKILL
    b2 = run_cli(home, *args, f"out={tmp_path / 'b'}")
    assert b2.returncode == 0, b2.stderr
    for name in ("model.safetensors", "lora.safetensors"):
        wa, wb = load_file(str(tmp_path / "a/model" / name)), load_file(str(tmp_path / "b/model" / name))
        assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa), name


def test_lowered_max_updates_finishes_at_that_checkpoint(home, tmp_path):
    """A longer run's checkpoint, resumed under max_updates equal to its update, ends with the
    weights of a run trained under that limit from the start; below it, a clear error."""
    args = ["train", "st", str(TINY / "st_tiny.yaml"), "corpus=t", "threads=1", "save_interval_updates=4",
            "validate_interval_updates=6", "average_last=2"]
    short = run_cli(home, *args, "max_updates=8", f"out={tmp_path / 'short'}")
    assert short.returncode == 0, short.stderr
    long = run_cli(home, *args, "max_updates=12", f"out={tmp_path / 'long'}")
    assert long.returncode == 0, long.stderr
    shutil.copytree(tmp_path / "long", tmp_path / "cut")
    shutil.rmtree(tmp_path / "cut/model")
    shutil.rmtree(tmp_path / "cut/checkpoints/checkpoint_12")
    # a limit below the last checkpoint cannot be met: say so, and touch nothing
    below = run_cli(home, *args, "max_updates=6", f"out={tmp_path / 'cut'}")
    assert below.returncode != 0 and "max_updates=6" in below.stderr and "update 8" in below.stderr
    assert not (tmp_path / "cut/model").exists()
    cut = run_cli(home, *args, "max_updates=8", f"out={tmp_path / 'cut'}")
    assert cut.returncode == 0, cut.stderr
    assert "the limits stop this run at checkpoint_8" in cut.stderr
    ws = load_file(str(tmp_path / "short/model/model.safetensors"))
    wc = load_file(str(tmp_path / "cut/model/model.safetensors"))
    assert ws.keys() == wc.keys() and all(torch.equal(ws[k], wc[k]) for k in ws)
    conf = json.loads((tmp_path / "cut/model/config.json").read_text())
    assert conf["updates"] == 8 and conf["averaged"] == ["checkpoint_4", "checkpoint_8"]
    state = json.loads((tmp_path / "cut/checkpoints/checkpoint_8/state.json").read_text())
    assert state["done"] and state["history"][-1]["update"] == 8 and "dev_nll" in state["history"][-1]


def test_a_paused_run_does_not_count_the_pause(home, tmp_path):
    """max_seconds budgets compute: a run stopped with SIGSTOP for 3 s after update 8 adds
    only the time of updates 9-12 to its clock (the wall clock would add the pause too)."""
    args = ["train", "st", str(TINY / "st_tiny.yaml"), "corpus=t", "threads=1", "max_updates=12",
            "save_interval_updates=4", "validate_interval_updates=6", "average_last=1", f"out={tmp_path / 'p'}"]
    env = {**os.environ, "INTERPRES_HOME": str(home), "INTERPRES_TEST_STOP_AT_UPDATE": "8"}
    proc = subprocess.Popen([sys.executable, "-m", "interpres", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT)
    stat = Path(f"/proc/{proc.pid}/stat")
    deadline = time.monotonic() + 240
    while proc.poll() is None and stat.read_text().rsplit(")", 1)[1].split()[0] != "T":
        assert time.monotonic() < deadline, "the run never reached update 8"
        time.sleep(0.05)
    time.sleep(3.0)
    proc.send_signal(signal.SIGCONT)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err[-3000:]
    seconds = {p.name: json.loads((p / "state.json").read_text())["seconds"]
               for p in list_checkpoints(tmp_path / "p/checkpoints")}
    assert seconds["checkpoint_12"] - seconds["checkpoint_8"] < 1.5, seconds


def test_active_clock_counts_cpu_time_when_the_process_did_not_run():
    now = {"wall": 10.0, "cpu": 1.0}
    clock = ActiveClock(5.0, wall=lambda: now["wall"], cpu=lambda: now["cpu"])
    now["wall"], now["cpu"] = 12.0, 5.0  # two threads busy for 2 s: the wall time
    assert clock.tick() == 7.0
    now["wall"], now["cpu"] = 112.0, 5.5  # stopped for most of 100 s: its CPU time
    assert clock.tick() == 7.5
    real = ActiveClock()
    time.sleep(0.3)  # not running: nothing counts
    assert real.tick() < 0.1
    start = time.process_time()
    while time.process_time() - start < 0.2:  # running: all of it
        pass
    assert real.tick() >= 0.19


def test_device_names_and_where_auto_trains(monkeypatch):
    with pytest.raises(ConfigError, match="device='gpu'"):
        LoopConfig(device="gpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if torch.cuda.is_available():
        assert resolve_device("auto").type == "cuda"
        monkeypatch.setenv("LOCAL_RANK", "0")
        assert resolve_device("cuda") == torch.device("cuda:0")  # torchrun's rank 0 takes GPU 0
    else:  # this machine: auto is the CPU, and asking for a GPU names the setting
        assert resolve_device("auto") == torch.device("cpu")
        with pytest.raises(ConfigError, match="device=cuda:1: .* sees no CUDA GPU"):
            resolve_device("cuda:1")


@pytest.mark.filterwarnings("ignore:.*meta parameter")  # loading weights into meta tensors is a no-op
def test_batches_and_optimizer_state_follow_the_device(tmp_path):
    # "meta" stands in for a GPU: a device other than the CPU that every torch has
    batch = {"features": torch.ones(2, 3), "lens": [torch.tensor([3, 2]), 7], "name": "x"}
    moved = to_device(batch, torch.device("meta"))
    assert moved["features"].is_meta and moved["lens"][0].is_meta and moved["lens"][1] == 7
    assert moved["name"] == "x" and batch["features"].device.type == "cpu"
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    save_checkpoint(tmp_path / "c", model, opt, {"update": 1})
    saved = load_file(str(tmp_path / "c/checkpoint.safetensors"))
    assert {"model.weight", "opt.0.exp_avg", "opt.0.step", "rng.torch"} <= set(saved)
    # resumed where the model now is: the moments go there, Adam's step count stays on the CPU
    on_meta = torch.nn.Linear(3, 2, device="meta")
    opt2 = torch.optim.Adam(on_meta.parameters())
    assert load_checkpoint(tmp_path / "c", on_meta, opt2)["update"] == 1
    st = opt2.state[on_meta.weight]
    assert st["exp_avg"].is_meta and st["exp_avg_sq"].is_meta and st["step"].device.type == "cpu"
    assert float(st["step"]) == 1.0


def test_checkpoint_average_is_the_mean(home, tmp_path):
    train(cfg_for(home, "asr", tmp_path / "r", "max_updates=20", "save_interval_updates=10", "average_last=2"))
    c10, c20 = list_checkpoints(tmp_path / "r/checkpoints")
    avg = average_checkpoints([c10, c20])
    t10, t20 = load_file(str(c10 / "checkpoint.safetensors")), load_file(str(c20 / "checkpoint.safetensors"))
    k = "encoder.layers.0.self_attn.q_proj.weight"
    assert torch.allclose(avg[k], (t10[f"model.{k}"] + t20[f"model.{k}"]) / 2)
    model, _ = load_model_dir(tmp_path / "r/model")
    assert torch.allclose(model.state_dict()[k], avg[k], atol=1e-3)  # stored as the model dir's dtype


def test_torchrun_trains_data_parallel(home, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "INTERPRES_HOME": str(home), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "interpres", "train", "st",
                          str(TINY / "st_tiny.yaml"), "corpus=t", f"out={tmp_path / 'ddp'}", "max_updates=6",
                          "save_interval_updates=3", "validate_interval_updates=3", "average_last=1"],
                         capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert (tmp_path / "ddp/model/model.safetensors").exists()
    assert [p.name for p in list_checkpoints(tmp_path / "ddp/checkpoints")] == ["checkpoint_3", "checkpoint_6"]


def test_recipe_errors_name_the_key(home, tmp_path):
    with pytest.raises(ConfigError, match="task must be 'asr' or 'st'"):
        load_config(TrainConfig, None, ["task=mt"])
    with pytest.raises(ConfigError, match="specaugment must be"):
        load_config(TrainConfig, None, ["specaugment=XX"])
    res = run_cli(home, "train", "asr", str(TINY / "st_tiny.yaml"))
    assert res.returncode == 2 and "says task: st" in res.stderr
    res = run_cli(home, "train", "st", str(TINY / "st_tiny.yaml"), "corpus=nonexistent", f"out={tmp_path / 'x'}")
    assert res.returncode == 2 and "corpus: 'nonexistent'" in res.stderr


def test_distillation_word_and_sequence_level(home, tmp_path, caplog):
    """A student from a whole model directory, word-level KD from a teacher, then seq-KD
    targets (cached, reused by a second run) with selective truncation."""
    teacher_dir = train(cfg_for(home, "st", tmp_path / "teacher", "max_updates=8"))
    student_dir = train(cfg_for(home, "st", tmp_path / "kd", f"init={teacher_dir}", f"teacher=[{teacher_dir}]",
                                "kd.alpha=0.5", "kd.temperature=2.0", "max_updates=10"))
    state = json.loads((list_checkpoints(tmp_path / "kd/checkpoints")[-1] / "state.json").read_text())
    assert all(h["kd"] >= 0 for h in state["history"] if "kd" in h) and any("kd" in h for h in state["history"])
    assert (tmp_path / "kd/spm.model").read_bytes() == (teacher_dir / "spm.model").read_bytes()
    assert load_model_dir(student_dir)[0].cfg == load_model_dir(teacher_dir)[0].cfg

    seq = cfg_for(home, "st", tmp_path / "seq", f"init={teacher_dir}", f"teacher=[{teacher_dir}]", "seq_kd=true",
                  "seq_kd_beam=2", "kd.alpha=0", "kd.truncate=0.5", "max_updates=2")
    caplog.set_level(logging.INFO, logger="speech.loop")
    train(seq)
    lines = (tmp_path / "seq/seq_kd.jsonl").read_text().splitlines()
    n = len(lines) - 1  # the regeneration's progress is in the logs, not only on a terminal's bar
    assert f"seq-KD targets: {n}/{n}" in [r.getMessage() for r in caplog.records]
    assert json.loads(lines[0])["settings"]["beam"] == 2 and len(lines) > 10
    assert all(isinstance(json.loads(x)["tokens"], list) for x in lines[1:])
    assert {json.loads(x)["id"].split(":")[0] for x in lines[1:]} == {"de", "fr", "en"}
    # a teacher output caught in a loop leaves its pair the reference (unless seq_kd_filter=false)
    looping = tmp_path / "looping/seq_kd.jsonl"
    looping.parent.mkdir()
    first = json.loads(lines[1])
    looping.write_text("\n".join([lines[0], json.dumps({**first, "tokens": [5, 6, 7] * 3}), *lines[2:]]) + "\n")
    cached = {d["id"]: d["tokens"] for d in map(json.loads, looping.read_text().splitlines()[1:])}
    tok = Tokenizer(tmp_path / "seq/spm.model")
    data = build_lang_data(read_texts(seq, "train"), tok, FbankConfig())
    teacher = load_model_dir(teacher_dir)[0]
    for keep_loops in (False, True):
        got = seq_kd_targets(data, [teacher], tok, looping, dataclasses.replace(seq, seq_kd_filter=not keep_loops))
        for i, out in cached.items():
            lang, k = i.split(":")
            ref = data[lang].targets[int(k)]
            want = ref if degenerate(out) and not keep_loops else ref[:1] + out + ref[-1:]
            assert got[lang].targets[int(k)] == want, i
    assert degenerate(cached[first["id"]])
    # the teacher's search with fairseq's n-gram ban and length bound: no target repeats a
    # bigram or runs past 4 pieces; the default cache above records neither setting
    train(cfg_for(home, "st", tmp_path / "banned", f"init={teacher_dir}", f"teacher=[{teacher_dir}]", "seq_kd=true",
                  "seq_kd_beam=2", "seq_kd_langs=[de,fr]", "seq_kd_no_repeat_ngram_size=2", "seq_kd_max_len_a=0",
                  "seq_kd_max_len_b=4", "kd.alpha=0", "max_updates=1"))
    banned_lines = (tmp_path / "banned/seq_kd.jsonl").read_text().splitlines()
    header = json.loads(banned_lines[0])["settings"]
    assert header["no_repeat_ngram_size"] == 2 and header["max_len"] == [0.0, 4]
    assert not {"no_repeat_ngram_size", "max_len"} & json.loads(lines[0])["settings"].keys()
    banned = [json.loads(x)["tokens"] for x in banned_lines[1:]]
    assert banned and all(len(t) <= 4 for t in banned)
    assert all(len(set(zip(t, t[1:]))) == len(t) - 1 for t in banned if len(t) > 1)
    unbanned = [t for i, t in cached.items() if i.split(":")[0] in ("de", "fr") and i != first["id"]]
    assert any(len(t) > 4 or len(set(zip(t, t[1:]))) < len(t) - 1 for t in unbanned)  # the bound did something
    # seq_kd_langs: only the translations are rewritten; the English transcripts stay references
    train(cfg_for(home, "st", tmp_path / "seq-de", f"init={teacher_dir}", f"teacher=[{teacher_dir}]", "seq_kd=true",
                  "seq_kd_beam=2", "seq_kd_langs=[de,fr]", "kd.alpha=0", "max_updates=1"))
    lines = (tmp_path / "seq-de/seq_kd.jsonl").read_text().splitlines()
    assert {json.loads(x)["id"].split(":")[0] for x in lines[1:]} == {"de", "fr"}
    # Seq-Inter: of the teacher's 2-best, the one nearest the reference, never farther than its best
    train(cfg_for(home, "st", tmp_path / "inter", f"init={teacher_dir}", f"teacher=[{teacher_dir}]", "seq_kd=true",
                  "seq_kd_beam=2", "seq_kd_select=closest", "kd.alpha=0", "max_updates=1"))
    lines = (tmp_path / "inter/seq_kd.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["select"] == "closest"
    inter = {d["id"]: d["tokens"] for d in map(json.loads, lines[1:])}
    best = {d["id"]: d["tokens"] for d in map(json.loads, (tmp_path / "seq/seq_kd.jsonl").read_text().splitlines()[1:])}
    assert inter.keys() == best.keys()
    cfg = cfg_for(home, "st", tmp_path / "inter")
    tok = Tokenizer(tmp_path / "inter/spm.model")
    refs = {lang: d.refs for lang, d in build_lang_data(read_texts(cfg, "train"), tok, FbankConfig()).items()}
    gains = [sentence_chrf(tok.decode(inter[i]), refs[i.split(":")[0]][int(i.split(":")[1])])
             - sentence_chrf(tok.decode(best[i]), refs[i.split(":")[0]][int(i.split(":")[1])]) for i in inter]
    assert min(gains) >= 0 and sum(g > 0 for g in gains) > 0, gains
    # unpaired audio: the English sentences a language lacks become its pairs, translated by the teacher
    caplog.clear()
    caplog.set_level(logging.INFO, logger="speech.train")
    train(cfg_for(home, "st", tmp_path / "unpaired", f"init={teacher_dir}", f"teacher=[{teacher_dir}]",
                  "seq_kd=true", "seq_kd_beam=2", "seq_kd_langs=[de,fr]", "seq_kd_unpaired=true", "kd.alpha=0",
                  "max_updates=1"))
    texts = read_texts(cfg, "train")
    english = [src for _, _, _, src in texts["en"]]
    translated = {lang: {src for _, _, _, src in texts[lang]} for lang in ("de", "fr")}
    lines = (tmp_path / "unpaired/seq_kd_unpaired.jsonl").read_text().splitlines()
    assert json.loads(lines[0])["settings"]["unpaired"] == {
        lang: sum(e not in have for e in english) for lang, have in translated.items()}
    unpaired = {d["id"]: d["tokens"] for d in map(json.loads, lines[1:])}
    assert len(unpaired) == sum(json.loads(lines[0])["settings"]["unpaired"].values()) > 0
    for i in unpaired:  # each is an English sentence the language has no translation of
        lang, k = i.split("+en:")
        assert english[int(k)] not in translated[lang]
    kept = sum(bool(t) and not degenerate(t) for t in unpaired.values())
    assert any(f"seq-KD on unpaired audio: {kept} more pairs" in r.getMessage() for r in caplog.records)
    assert (tmp_path / "unpaired/seq_kd.jsonl").read_text() == (tmp_path / "seq-de/seq_kd.jsonl").read_text()
    # a teacher retrained in place (same folder, new weights) does not reuse the old teacher's translations
    moving = tmp_path / "moving"
    shutil.copytree(teacher_dir, moving)
    settings = [f"init={moving}", f"teacher=[{moving}]", "seq_kd=true", "seq_kd_beam=2", "seq_kd_langs=[de,fr]",
                "kd.alpha=0", "max_updates=1"]
    train(cfg_for(home, "st", tmp_path / "before", *settings))
    shutil.copy(student_dir / "model.safetensors", moving / "model.safetensors")
    (tmp_path / "after").mkdir()
    shutil.copy(tmp_path / "before/seq_kd.jsonl", tmp_path / "after/seq_kd.jsonl")
    with pytest.raises(SeqKDError, match="seq_kd.jsonl: made with other settings"):
        train(cfg_for(home, "st", tmp_path / "after", *settings))
    with pytest.raises(ConfigError, match="seq_kd_unpaired needs seq_kd"):
        cfg_for(home, "st", tmp_path / "x", f"teacher=[{teacher_dir}]", "seq_kd_unpaired=true")
    with pytest.raises(ConfigError, match="seq_kd_select must be one of best, closest"):
        cfg_for(home, "st", tmp_path / "x", "seq_kd_select=oracle")
    with pytest.raises(ConfigError, match="seq_kd_langs: it not among"):
        cfg_for(home, "st", tmp_path / "x", "seq_kd_langs=[it]")
    with pytest.raises(ConfigError, match="seq_kd needs teacher"):
        cfg_for(home, "st", tmp_path / "x", "seq_kd=true")
    for bad, field_name in (("seq_kd_no_repeat_ngram_size=-1", "seq_kd_no_repeat_ngram_size"),
                            ("seq_kd_max_len_a=.inf", "seq_kd_max_len_a"), ("seq_kd_max_len_b=1.5", "seq_kd_max_len_b")):
        with pytest.raises(ConfigError, match=field_name):
            cfg_for(home, "st", tmp_path / "x", bad)
    with pytest.raises(ConfigError, match="both 0"):
        cfg_for(home, "st", tmp_path / "x", "seq_kd_max_len_a=0", "seq_kd_max_len_b=0")
    with pytest.raises(ConfigError, match="init excludes init_encoder"):
        cfg_for(home, "st", tmp_path / "x", f"init={teacher_dir}", f"init_encoder={teacher_dir}")


def test_st_fine_tunes_an_imported_whisper_with_the_encoder_frozen(home, tmp_path):
    """`init` of an imported Whisper: its tokenizer, log-mel features and prompt carry over;
    `freeze: [encoder]` keeps the encoder as it was while the decoder learns."""
    pytest.importorskip("ctranslate2")
    from speech.translate import load_translator
    from speech.whisper import WhisperTokenizer, import_whisper
    from whisper_fixtures import tiny_ct2_whisper

    base = import_whisper(str(tiny_ct2_whisper(tmp_path / "ct2")), tmp_path / "base", pad_to_s=0.0)
    out = train(cfg_for(home, "st", tmp_path / "ft", f"init={base}", "freeze=[encoder]", "ctc_weight=0",
                        "max_updates=20", "lr=0.002", "label_smoothing=0", "specaugment=none"))
    assert (out / "tokenizer.json").exists() and not (out / "spm.model").exists()
    tuned, conf = load_model_dir(out)
    assert conf["tokenizer"] == "whisper" and conf["features"]["type"] == "log_mel"
    assert conf["languages"] == ["de", "fr", "en"] and conf["whisper"]["format"] == "ctranslate2"
    start, _ = load_model_dir(base)
    for name, t in start.state_dict().items():
        if name.startswith("encoder."):
            assert torch.equal(tuned.state_dict()[name], t), name
    assert not torch.equal(tuned.decoder.layers[0].ffn.fc1.weight, start.decoder.layers[0].ffn.fc1.weight)
    history = json.loads((list_checkpoints(tmp_path / "ft/checkpoints")[-1] / "state.json").read_text())["history"]
    dev = [h["dev_nll"] for h in history if "dev_nll" in h]  # at updates 10 and 20
    assert len(dev) == 2 and dev[1] < dev[0]  # it learns
    tr = load_translator(out)
    assert isinstance(tr.tokenizer, WhisperTokenizer) and tr.prefix("fr")[1] == 260

    with pytest.raises(ConfigError, match="freeze: 'encoder.nope' names no parameters"):
        train(cfg_for(home, "st", tmp_path / "bad", f"init={base}", "freeze=[encoder.nope]", "max_updates=1"))


def test_a_student_cut_from_its_teacher_shares_the_frozen_encoder(home, tmp_path, caplog):
    """A Distil-Whisper student (the teacher's decoder cut to some of its layers, the encoder
    frozen): one encoder forward serves both, with the same loss and gradients as two."""
    pytest.importorskip("ctranslate2")
    from compress.prune import PruneConfig, prune
    from speech.compressing import SpeechFamily
    from speech.train import SpeechRecipe, shares_encoder
    from speech.whisper import import_whisper
    from whisper_fixtures import tiny_ct2_whisper

    teacher_dir = import_whisper(str(tiny_ct2_whisper(tmp_path / "ct2")), tmp_path / "teacher", pad_to_s=0.0)
    family = SpeechFamily(corpus="t")
    cut = family.load(teacher_dir)
    prune(cut, PruneConfig(importance="magnitude", layers={"decoder.layers": [1]}))
    family.save(cut, teacher_dir, tmp_path / "cut", {"prune": "decoder.layers: [1]"})
    assert (tmp_path / "cut/tokenizer.json").exists()  # Whisper's tokenizer goes with it

    frozen = ["encoder", "decoder.embed_tokens", "decoder.embed_positions"]
    cfg = cfg_for(home, "st", tmp_path / "student", f"init={tmp_path / 'cut'}", f"teacher=[{teacher_dir}]",
                  "kd.alpha=0.5", f"freeze=[{','.join(frozen)}]", "ctc_weight=0", "specaugment=none",
                  "max_updates=4", "lr=0.002")
    with caplog.at_level(logging.INFO, logger="speech.train"):
        out = train(cfg)
    assert any("runs once for both" in r.getMessage() for r in caplog.records)
    student, _ = load_model_dir(out)
    teacher, _ = load_model_dir(teacher_dir)
    assert len(student.decoder.layers) == 1
    assert all(torch.equal(t, teacher.encoder.state_dict()[k]) for k, t in student.encoder.state_dict().items())
    assert not torch.equal(student.decoder.layers[0].ffn.fc1.weight, teacher.decoder.layers[1].ffn.fc1.weight)

    for p in student.parameters():
        p.requires_grad_(False)
    for p in student.decoder.layers.parameters():
        p.requires_grad_(True)
    assert shares_encoder(student, [teacher])
    other, _ = load_model_dir(teacher_dir)
    with torch.no_grad():
        other.encoder.layers[0].ffn.fc1.weight.add_(0.01)
    assert not shares_encoder(student, [other])
    g = torch.Generator().manual_seed(0)
    prompt = torch.tensor([[student.cfg.bos_id, 260]] * 3)
    text = torch.randint(0, 200, (3, 5), generator=g)
    batch = {"features": torch.randn(3, 120, 80, generator=g), "feat_lens": torch.tensor([120, 97, 64]),
             "prev": torch.cat([prompt, text], 1),
             "target": torch.cat([prompt[:, 1:], text, torch.full((3, 1), student.cfg.eos_id)], 1),
             "ctc": torch.zeros(3, 1, dtype=torch.long), "ctc_lens": torch.ones(3, dtype=torch.long)}
    runs = []
    for shared in (False, True):
        student.zero_grad()
        recipe = SpeechRecipe(cfg, None, {}, {}, student.cfg, None, {}, 1, [teacher], None, shared)
        stats = recipe.backward(student, [batch])
        runs.append((stats, [p.grad.clone() for p in student.decoder.layers.parameters()]))
    assert runs[0][0] == pytest.approx(runs[1][0], rel=1e-5)
    for a, b in zip(runs[0][1], runs[1][1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    assert runs[0][0]["kd"] > 0


def test_st_trains_low_rank_adapters_and_writes_them_merged(home, tmp_path):
    pytest.importorskip("ctranslate2")
    from speech.whisper import import_whisper
    from whisper_fixtures import tiny_ct2_whisper

    base = import_whisper(str(tiny_ct2_whisper(tmp_path / "ct2")), tmp_path / "base", pad_to_s=0.0)
    out = train(cfg_for(home, "st", tmp_path / "lora", f"init={base}", "lora.rank=2", "lora.modules=[decoder]",
                        "ctc_weight=0", "max_updates=20", "lr=0.01", "specaugment=none"))
    tuned, conf = load_model_dir(out)  # a plain model directory: the adapters merged
    start, _ = load_model_dir(base)
    assert conf["lora"]["rank"] == 2
    adapters = load_file(str(out / "lora.safetensors"))
    assert set(adapters) == {f"decoder.layers.{i}.{a}.{p}.lora_{ab}" for i in range(2)
                             for a in ("self_attn", "encoder_attn") for p in ("q_proj", "v_proj") for ab in "ab"}
    changed = {n for n, t in start.state_dict().items() if not torch.equal(tuned.state_dict()[n], t)}
    assert changed and all(n.startswith("decoder.") and n.endswith(("q_proj.weight", "v_proj.weight"))
                           for n in changed)


def test_bf16_autocast_trains_with_float32_weights(home, tmp_path, monkeypatch, caplog):
    """precision=bf16: forward and backward under bfloat16 autocast; the run learns, what it
    stores stays float32, and it is a different computation from fp32's (the same seed). On a
    CPU without bfloat16 instructions (emulated: 10-100x slower) the loop says so."""
    import speech.loop

    monkeypatch.setattr(speech.loop, "cpu_has_bf16", lambda: False)
    runs = {}
    for precision in ("fp32", "bf16"):
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="speech.loop"):
            out = train(cfg_for(home, "st", tmp_path / precision, f"precision={precision}", "max_updates=20",
                                "validate_interval_updates=10", "specaugment=none"))
        warned = any("without bfloat16 instructions" in r.getMessage() for r in caplog.records)
        assert warned == (precision == "bf16")
        ckpt = list_checkpoints(tmp_path / precision / "checkpoints")[-1]
        history = json.loads((ckpt / "state.json").read_text())["history"]
        dev = [h["dev_nll"] for h in history if "dev_nll" in h]
        assert len(dev) == 2 and dev[1] < dev[0], (precision, dev)
        weights = load_file(str(ckpt / "checkpoint.safetensors"))  # weights, Adam moments, RNGs
        assert all(t.dtype == torch.float32 for t in weights.values() if t.is_floating_point())
        runs[precision] = load_model_dir(out)[0].state_dict()
    assert any(not torch.equal(runs["fp32"][n], runs["bf16"][n]) for n in runs["fp32"])
    with pytest.raises(ConfigError, match="precision='fp16': expected one of fp32, bf16"):
        load_config(TrainConfig, None, ["precision=fp16"])
