"""Shared fixtures; the builders they wrap are in tests/support/builders.py."""

from types import SimpleNamespace

import pytest
import torch

from builders import write_text_corpus
from streams import bundle_like, train_tiny_segmenter, train_tiny_translator, write_stream_corpus


@pytest.fixture
def text_home(tmp_path):
    """A tiny hand-written text corpus under a fresh $INTERPRES_HOME-style folder."""
    return write_text_corpus(tmp_path / "home")


@pytest.fixture(scope="session")
def make_text_home():
    """Write the tiny text corpus under a given home (for a second, independent home)."""
    return write_text_corpus


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest on one thread, and the cores may be busy with other work."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_simul(tmp_path_factory):
    """A tiny stream corpus, translator and boundary detector (tests/support/streams.py), once."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("simul")
    corpus = write_stream_corpus(root / "corpus")
    model = train_tiny_translator(corpus, root / "run")
    train_tiny_segmenter(corpus, root / "segmenter")
    bundle = bundle_like(model, root / "segmenter", root / "bundle")
    torch.set_num_threads(n)
    return SimpleNamespace(root=root, corpus=corpus, model=model, segmenter=root / "segmenter", bundle=bundle)
