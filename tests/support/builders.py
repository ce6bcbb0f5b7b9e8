"""Tiny real fixtures shared by the tests: text corpora, MuST-C corpora, model directories.

Importable from any test module (pytest's ``pythonpath`` includes tests/support/); fixtures that
wrap them live in conftest.py.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from speech.features import FbankConfig
from speech.checkpoint import save_model_dir
from speech.model import S2TModel
from speech.model_config import preset
from speech.tokenizer import train_st_tokenizer

PAIRS = {
    "train": [
        ("Open the file in a new window.", "Öffne die Datei in einem neuen Fenster.", "Ouvrir le fichier dans une nouvelle fenêtre."),
        ("Save all changes before closing.", "Alle Änderungen vor dem Schließen speichern.", "Enregistrer les modifications avant de fermer."),
        ("The printer is out of paper.", "Der Drucker hat kein Papier mehr.", "L'imprimante n'a plus de papier."),
        ("Select a folder to import.", "Wählen Sie einen Ordner zum Importieren.", "Sélectionnez un dossier à importer."),
        ("Show hidden files", "Versteckte Dateien anzeigen", "Afficher les fichiers cachés"),
        ("Quit", "Beenden", "Quitter"),  # one word: not spoken at min_words=2
        ("Connection refused by the server.", "Verbindung vom Server abgelehnt.", "Connexion refusée par le serveur."),
        ("Use /usr/bin/env to run it.", "Mit /usr/bin/env ausführen.", "Lancer avec /usr/bin/env."),  # not speakable
    ],
    "dev": [
        ("Cannot read the disk.", "Die Festplatte kann nicht gelesen werden.", "Impossible de lire le disque."),
        ("Remove the selected item.", "Das ausgewählte Element entfernen.", "Supprimer l'élément sélectionné."),
    ],
    "test": [
        ("The network is unreachable.", "Das Netzwerk ist nicht erreichbar.", "Le réseau est inaccessible."),
        ("Print the current page.", "Die aktuelle Seite drucken.", "Imprimer la page actuelle."),
        ("Close all open tabs.", "Alle offenen Tabs schließen.", "Fermer tous les onglets ouverts."),
    ],
}
SENTENCES = {
    "train": ["A fool and his money are soon parted.", "Every cloud has a silver lining.",
              "The early bird catches the worm.", "Still waters run deep in the valley."],
    "dev": ["Actions speak louder than words.", "Better late than never, they say."],
    "test": ["Birds of a feather flock together.", "Practice makes perfect in the end."],
}


def write_text_corpus(home):
    text = home / "text"
    for split, rows in PAIRS.items():
        for col, lang in ((1, "de"), (2, "fr")):
            path = text / f"en-{lang}" / f"{split}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("en\t%s\tcatalog\tindex\n" % lang
                            + "".join(f"{r[0]}\t{r[col]}\ttest/cat\t{i}\n" for i, r in enumerate(rows)))
        (text / "en").mkdir(parents=True, exist_ok=True)
        (text / "en" / f"{split}.txt").write_text("".join(s + "\n" for s in SENTENCES[split]))
    (text / "summary.json").write_text(json.dumps({"counts": {}, "config": {}}))
    return home


SR = 16000
SPLIT = "tst-COMMON"
TALKS = {"ted_7.wav": 4.0, "ted_9.wav": 3.0}
# (talk, offset, duration): durations all differ, so an utterance is known by its frame count
UTTS = [("ted_7.wav", 0.20, 0.80), ("ted_7.wav", 1.10, 1.00), ("ted_7.wav", 2.30, 1.20),
        ("ted_9.wav", 0.10, 0.90), ("ted_9.wav", 1.20, 1.30)]
TEXTS = {
    "en": ["Open the file in a new window.", "Save all changes before closing.", "The printer is out of paper.",
           "Select a folder to import.", "Connection refused by the server."],
    "de": ["Öffne die Datei in einem neuen Fenster.", "Alle Änderungen vor dem Schließen speichern.",
           "Der Drucker hat kein Papier mehr.", "Wählen Sie einen Ordner zum Importieren.",
           "Verbindung vom Server abgelehnt."],
    "fr": ["Ouvrir le fichier dans une nouvelle fenêtre.", "Enregistrer les modifications avant de fermer.",
           "L'imprimante n'a plus de papier.", "Sélectionnez un dossier à importer.",
           "Connexion refusée par le serveur."],
}


def build_eval_corpus(root: Path, pairs=("en-de", "en-fr"), split: str = SPLIT) -> Path:
    """Two talks per pair, five utterances cut from them by offset and duration."""
    rng = np.random.default_rng(0)
    for pair in pairs:
        base = root / pair / "data" / split
        (base / "wav").mkdir(parents=True)
        (base / "txt").mkdir()
        for k, (name, seconds) in enumerate(TALKS.items()):
            t = np.arange(int(seconds * SR)) / SR
            wave = 0.3 * np.sin(2 * np.pi * (220 + 110 * k) * t * (1 + t / 8)) + 0.01 * rng.standard_normal(len(t))
            sf.write(base / "wav" / name, wave.astype(np.float32), SR, subtype="PCM_16")
        (base / "txt" / f"{split}.yaml").write_text("".join(
            f"- {{duration: {d}, offset: {o}, speaker_id: spk.{w[4]}, wav: {w}}}\n" for w, o, d in UTTS))
        (base / "txt" / f"{split}.en").write_text("".join(s + "\n" for s in TEXTS["en"]))
        tgt = pair.split("-")[1]
        if tgt != "asr":
            (base / "txt" / f"{split}.{tgt}").write_text("".join(s + "\n" for s in TEXTS[tgt]))
    return root


def make_model_dir(path: Path, langs=("de", "fr"), task: str = "st", seed: int = 0, n_mels: int = 80,
                   vocab_size: int = 60) -> Path:
    """A model directory as training writes it, holding a tiny random model."""
    path.mkdir(parents=True, exist_ok=True)
    tok = train_st_tokenizer({lang: TEXTS[lang] for lang in {*langs, "en"}}, path / "spm.model", vocab_size=vocab_size)
    torch.manual_seed(seed)
    cfg = preset("tiny", tok.vocab_size, n_mels=n_mels)
    save_model_dir(S2TModel(cfg), cfg, path, extra={"task": task, "languages": list(langs),
                                                    "features": dataclasses.asdict(FbankConfig(num_mel_bins=n_mels))})
    (path / "README.md").write_text("a tiny random model for tests\n")
    return path


def make_parrot_model_dir(path: Path, sentence: str = TEXTS["de"][1], steps: int = 120) -> Path:
    """A tiny model trained (a few seconds) to say one German ``sentence`` whatever it hears, as a
    translator that has learned its target language and nothing of the audio: it gives the
    streaming policies word-like output to agree on and to cut at word ends."""
    from speech.translate import load_translator  # noqa: PLC0415
    from speech.checkpoint import load_model_dir
    from speech.losses import label_smoothed_nll_loss  # noqa: PLC0415
    from speech.model_config import EOS_ID  # noqa: PLC0415

    make_model_dir(path, langs=("de",), vocab_size=60)
    tr = load_translator(path)
    model, config = load_model_dir(path)
    ids = tr.tokenizer.encode(sentence)
    prev = torch.tensor([tr.prefix("de") + ids] * 4)
    target = torch.tensor([ids + [EOS_ID]] * 4)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        lens = torch.randint(40, 400, (4,), generator=g)
        feats = torch.randn(4, int(lens.max()), model.cfg.n_mels, generator=g)
        loss, _ = label_smoothed_nll_loss(model(feats, lens, prev)["logits"], target, epsilon=0.0)
        opt.zero_grad()
        loss.backward()
        opt.step()
    extra = {k: v for k, v in config.items() if k != "model"}
    save_model_dir(model.eval(), model.cfg, path, extra=extra)
    return path


LALM_TEXTS = ["Is there a bell in the recording?", "What do you hear?", "yes", "no", "A bell, then speech.",
              "How many times did the drum sound?", "1", "2", "3", "Only background noise."]


def make_lalm_dir(path: Path, encoder_dir: Path, seed: int = 0) -> Path:
    """A tiny random audio-language model hearing through the speech model at ``encoder_dir``."""
    from audio_align.lalm import AudioLanguageModel, LalmConfig, save_lalm_dir, train_chat_tokenizer

    path.mkdir(parents=True, exist_ok=True)
    tok = train_chat_tokenizer(LALM_TEXTS * 10, path / "spm.model", 120)
    d_model = json.loads((encoder_dir / "config.json").read_text())["model"]["d_model"]
    torch.manual_seed(seed)
    cfg = LalmConfig(audio_encoder=str(encoder_dir), encoder_dim=d_model, hidden_size=32, layers=1, heads=2,
                     kv_heads=1, intermediate_size=64, projector_dim=16, vocab_size=tok.vocab_size)
    save_lalm_dir(AudioLanguageModel(cfg, tok.audio), path / "spm.model", path)
    return path


MO_HEADER = "Content-Type: text/plain; charset=UTF-8\nPlural-Forms: nplurals=2; plural=(n != 1);\n"


def write_mo(path: Path, entries: list[tuple[str, str]]) -> Path:
    """A GNU .mo file (the format msgfmt writes) holding ``entries``."""
    entries = sorted([("", MO_HEADER)] + entries)
    ids = [k.encode() for k, _ in entries]
    strs = [v.encode() for _, v in entries]
    n = len(entries)
    orig_off, trans_off = 28, 28 + 8 * n
    data_off = trans_off + 8 * n
    table, blob = [], b""
    for s in ids + strs:
        table.append((len(s), data_off + len(blob)))
        blob += s + b"\0"
    head = struct.pack("<7I", 0x950412DE, 0, n, orig_off, trans_off, 0, 0)
    body = b"".join(struct.pack("<2I", *t) for t in table)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(head + body + blob)
    return path
