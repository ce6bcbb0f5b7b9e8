"""Catalog reading and cleaning on real .mo files written here."""

from builders import write_mo
from speech.data import catalogs
from speech.data.text import assign_split, choose_translations, split_key


def test_read_catalog_handles_context_and_plurals(tmp_path):
    mo = write_mo(tmp_path / "de.mo", [
        ("menu\x04Open file", "Datei öffnen"),
        ("%d file\x00%d files", "%d Datei\x00%d Dateien"),
        ("one window\x00many windows", "ein Fenster\x00viele Fenster"),
    ])
    got = {msgid: msgstr for _, msgid, msgstr in catalogs.read_catalog(mo)}
    assert got == {"Open file": "Datei öffnen", "%d file": "%d Datei", "one window": "ein Fenster"}


def test_unreadable_catalog_is_skipped(tmp_path):
    bad = tmp_path / "bad.mo"
    bad.write_bytes(b"not a catalog at all")
    assert list(catalogs.read_catalog(bad)) == []


def test_cleaning_rules():
    keep = catalogs.clean_pair
    assert keep("_Open File", "Datei _öffnen", "de") == ("Open File", "Datei öffnen")
    assert keep("&Save", "&Speichern", "de") == ("Save", "Speichern")
    assert keep("Open", "開く(_O)", "ja") == ("Open", "開く")
    assert keep("snake_case name", "snake_case Name", "de") == ("snake_case name", "snake_case Name")
    for en, tgt in [
        ("Delete %s", "%s löschen"), ("Copied %(count)d items", "%(count)d kopiert"),
        ("Open {0}", "{0} öffnen"), ("Set $HOME", "$HOME setzen"), ("<b>Bold</b>", "<b>Fett</b>"),
        ("cannot instantiate %qD", "kann %qD nicht"), ("two\nlines", "zwei\nZeilen"),
        ("OK", "OK"), ("x" * 401, "y" * 401), ("42", "42x"),
    ]:
        assert keep(en, tgt, "de") is None, en
    # a non-Latin target must be in its script: an untranslated command name is not Russian
    assert keep("List files", "ls", "ru") is None
    assert keep("List files", "Список файлов", "ru") == ("List files", "Список файлов")
    assert keep("Quit", "退出", "zh") == ("Quit", "退出")


def test_find_catalogs_and_pairs(tmp_path):
    root = tmp_path / "pkg"
    write_mo(root / "usr/share/locale/de/LC_MESSAGES/tool.mo", [("Quit the tool", "Programm beenden"), ("%s", "%s")])
    write_mo(root / "usr/share/locale/zh_TW/LC_MESSAGES/tool.mo", [("Quit the tool", "結束")])
    write_mo(root / "django/contrib/admin/locale/fr/LC_MESSAGES/django.mo", [("Log out", "Déconnexion")])
    found = catalogs.find_catalogs({"pkg": root})
    assert sorted(loc for _, loc, _ in found) == ["de", "fr", "zh_TW"]
    de = [f for f in found if f[1] == "de"][0]
    pairs = catalogs.pairs_from_catalog(*de, lang="de")
    assert [(p.en, p.tgt, p.catalog) for p in pairs] == [("Quit the tool", "Programm beenden", "pkg/tool")]
    fr = [f for f in found if f[1] == "fr"][0]
    assert catalogs.pairs_from_catalog(*fr, lang="fr")[0].catalog == "pkg/admin/django"
    # Traditional Chinese is not a source for zh (Simplified)
    assert catalogs.locale_rank("zh", "zh_TW") is None and catalogs.locale_rank("zh", "zh_CN") == 0


def test_choose_translation_majority_then_locale():
    P = catalogs.Pair
    pairs = [
        P("Cancel", "Abbrechen", "a/a", 3, "de"), P("Cancel", "Abbruch", "b/b", 1, "de_AT"),
        P("Cancel", "Abbrechen", "c/c", 0, "de_DE"), P("Help", "Hilfe (AT)", "b/b", 2, "de_AT"),
        P("Help", "Hilfe", "a/a", 1, "de"),
    ]
    chosen = {p.en: p for p in choose_translations(pairs, "de")}
    assert chosen["Cancel"].tgt == "Abbrechen"  # two votes against one
    assert chosen["Help"].tgt == "Hilfe"  # a tie goes to the better locale
    assert [p.en for p in choose_translations(pairs, "de")] == ["Help", "Cancel"]  # catalog order


def test_split_is_keyed_on_normalized_english():
    assert split_key("_Open…") == split_key("open") == "open"
    splits = {assign_split(f"Sentence number {i}", 1, 0.1, 0.1) for i in range(400)}
    assert splits == {"train", "dev", "test"}
    for text in ("Open", "Save As", "Quit"):
        assert assign_split(text, 1, 0.1, 0.1) == assign_split(text.upper() + "...", 1, 0.1, 0.1)
    # the seed changes the split
    moved = sum(assign_split(f"s{i}", 1, 0.3, 0.3) != assign_split(f"s{i}", 2, 0.3, 0.3) for i in range(200))
    assert moved > 50
