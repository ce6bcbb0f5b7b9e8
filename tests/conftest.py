"""A tiny text corpus written by hand, so speech tests need no package download."""

import json

import pytest

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


@pytest.fixture
def text_home(tmp_path):
    return write_text_corpus(tmp_path / "home")


@pytest.fixture
def make_text_home():
    """Write the tiny text corpus under a given home (for a second, independent home)."""
    return write_text_corpus
