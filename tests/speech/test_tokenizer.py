import pytest

from speech import model_config as model_module
from speech.tokenizer import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Tokenizer,
    TokenizerError,
    train_st_tokenizer,
    train_tokenizer,
)

TEXTS = {
    "de": [
        "Öffne die Datei in einem neuen Fenster.",
        "Alle Änderungen vor dem Schließen speichern.",
        "Der Drucker hat kein Papier mehr.",
        "Wählen Sie einen Ordner zum Importieren.",
        "Die Verbindung wurde vom Server abgelehnt.",
        "Das Netzwerk ist nicht erreichbar.",
        "Die aktuelle Seite drucken.",
        "Möchten Sie die Änderungen wirklich verwerfen?",
        "Die Festplatte kann nicht gelesen werden.",
        "Das ausgewählte Element entfernen.",
        "Heute ist das Wetter schön und warm.",
        "Wir treffen uns morgen früh am Bahnhof.",
        "Ich habe das Buch gestern gelesen.",
    ],
    "ja": [
        "新しいウィンドウでファイルを開きます。",
        "閉じる前にすべての変更を保存してください。",
        "プリンターの用紙がなくなりました。",
        "インポートするフォルダーを選択してください。",
        "サーバーによって接続が拒否されました。",
        "ネットワークに接続できません。",
        "現在のページを印刷します。",
        "変更を本当に破棄しますか？",
        "ディスクを読み取れません。",
        "選択した項目を削除します。",
        "今日はとても良い天気ですね。",
        "明日の朝、駅で会いましょう。",
        "昨日その本を読みました。",
    ],
    "zh": [
        "在新窗口中打开文件。",
        "关闭前保存所有更改。",
        "打印机没有纸了。",
        "请选择要导入的文件夹。",
        "连接被服务器拒绝。",
        "网络无法访问。",
        "打印当前页面。",
        "你确定要放弃这些更改吗？",
        "无法读取磁盘。",
        "删除所选项目。",
        "今天天气很好，我们去公园吧！",
        "明天早上我们在火车站见面。",
        "我昨天读了那本书。",
    ],
    "ru": [
        "Открыть файл в новом окне.",
        "Сохраните все изменения перед закрытием.",
        "В принтере закончилась бумага.",
        "Выберите папку для импорта.",
        "Сервер отклонил соединение.",
        "Сеть недоступна.",
        "Напечатать текущую страницу.",
        "Вы действительно хотите отменить изменения?",
        "Не удаётся прочитать диск.",
        "Удалить выбранный элемент.",
        "Сегодня хорошая и тёплая погода.",
        "Встретимся завтра утром на вокзале.",
        "Вчера я прочитал эту книгу.",
    ],
}
ALL = [line for lines in TEXTS.values() for line in lines]


@pytest.fixture(scope="module")
def st_tok(tmp_path_factory):
    return train_st_tokenizer(TEXTS, tmp_path_factory.mktemp("spm") / "spm.model", vocab_size=400)


def test_special_ids_are_fixed_and_match_the_model(st_tok):
    assert (st_tok.pad_id, st_tok.unk_id, st_tok.bos_id, st_tok.eos_id) == (0, 1, 2, 3)
    assert [st_tok.sp.id_to_piece(i) for i in range(4)] == ["<pad>", "<unk>", "<s>", "</s>"]
    assert (PAD_ID, UNK_ID, BOS_ID, EOS_ID) == (model_module.PAD_ID, model_module.UNK_ID,
                                               model_module.BOS_ID, model_module.EOS_ID)
    assert 100 < st_tok.vocab_size <= 400


def test_round_trip_of_seen_sentences(st_tok):
    for line in ALL:
        ids = st_tok.encode(line)
        assert ids and UNK_ID not in ids, line
        assert st_tok.decode(ids) == line
    assert st_tok.decode(st_tok.encode("你确定要放弃这些更改吗？")).endswith("？")


def test_language_tags_are_single_tokens_with_stable_ids(st_tok):
    # sorted languages after the 4 special ids; en is always there
    assert st_tok.languages == ["de", "en", "ja", "ru", "zh"]
    assert [st_tok.lang_tag(lang) for lang in st_tok.languages] == [4, 5, 6, 7, 8]
    assert st_tok.encode("<lang:ja>")[-1] == st_tok.lang_tag("ja")
    assert st_tok.prefix("ru") == [7]
    assert st_tok.prefix() == [BOS_ID]


def test_target_ids_and_decode_drop_tags(st_tok):
    line = TEXTS["ja"][0]
    seq = st_tok.target_ids(line, "ja")
    assert seq[0] == st_tok.lang_tag("ja") and seq[-1] == EOS_ID
    assert seq[1:-1] == st_tok.encode(line)
    assert st_tok.decode(seq) == line
    # stops at eos, drops pad/bos/tags anywhere
    assert st_tok.decode([BOS_ID, st_tok.lang_tag("de")] + st_tok.encode("Sieh an") + [EOS_ID] + st_tok.encode("nein")
                         + [PAD_ID, PAD_ID]) == "Sieh an"


def test_training_is_deterministic(tmp_path):
    a = train_st_tokenizer(TEXTS, tmp_path / "a.model", vocab_size=300)
    b = train_st_tokenizer(dict(reversed(list(TEXTS.items()))), tmp_path / "b.model", vocab_size=300)
    assert a.path.read_bytes() == b.path.read_bytes()
    assert not list(tmp_path.glob(".*tmp*"))


def test_unknown_language_names_it_and_the_known_ones(st_tok):
    with pytest.raises(TokenizerError, match=r"'fr'.*known: de, en, ja, ru, zh"):
        st_tok.lang_tag("fr")
    with pytest.raises(TokenizerError, match="fr"):
        st_tok.target_ids("Bonjour", "fr")


def test_plain_tokenizer_and_errors(tmp_path):
    tok = train_tokenizer(TEXTS["de"], tmp_path / "de.model", vocab_size=120, model_type="bpe")
    assert tok.languages == []
    with pytest.raises(TokenizerError, match="known: none"):
        tok.lang_tag("de")
    assert tok.target_ids("Das Netzwerk", None)[0] == BOS_ID
    assert Tokenizer(tmp_path / "de.model").encode("Das Netzwerk") == tok.encode("Das Netzwerk")
    with pytest.raises(TokenizerError, match="missing.model"):
        Tokenizer(tmp_path / "missing.model")
    (tmp_path / "junk.model").write_bytes(b"not a protobuf")
    with pytest.raises(TokenizerError, match="junk.model"):
        Tokenizer(tmp_path / "junk.model")
    with pytest.raises(TokenizerError, match="training failed"):
        train_tokenizer(["", "  "], tmp_path / "empty.model", vocab_size=50)
    with pytest.raises(TokenizerError, match="language code"):
        train_st_tokenizer({"d e": ["x"]}, tmp_path / "bad.model", vocab_size=50)
