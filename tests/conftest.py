"""Shared pytest fixtures: small, real objects built in memory (no downloads)."""

import pytest

TINY_CORPUS = [
    "the quick brown fox jumps over the lazy dog near a quiet river bank",
    "a small cat sleeps on warm stones while green birds sing in tall trees",
    "old sailors tell long stories about cold seas , white whales and distant islands",
    "every morning she reads one book , drinks black coffee and writes three letters",
    "clocks strike twelve ; people hurry home through dark streets under bright lamps !",
]


@pytest.fixture
def tiny_tokenizer():
    """A real word-level `PreTrainedTokenizerFast` (≈ 80 tokens) trained in memory on TINY_CORPUS.

    Whitespace pre-tokenization and space-joined decoding make decode → encode round trips exact, so tests
    can compare token ids position by position. Special tokens: [UNK] (unknown words), [PAD], [EOS]."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(TINY_CORPUS, trainers.WordLevelTrainer(special_tokens=["[UNK]", "[PAD]", "[EOS]"]))
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", eos_token="[EOS]")


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory):
    """A tiny random Llama + character tokenizer saved as a Hugging Face directory (for CLI tests)."""
    from tiny import tiny_model

    path = tmp_path_factory.mktemp("tiny-llama")
    lm = tiny_model("llama")
    lm.model.save_pretrained(path)
    lm.tokenizer.save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def explorer_store(tmp_path_factory, model_dir):
    """A run store of real tiny-model runs of every kind the explorer reads, one corrupt and one half-written run;
    yields (runs folder, {role: run_id})."""
    from explorer_store import build
    from tiny import tiny_model

    other = tmp_path_factory.mktemp("tiny-qwen2")
    lm = tiny_model("qwen2")
    lm.model.save_pretrained(other)
    lm.tokenizer.save_pretrained(other)
    runs = tmp_path_factory.mktemp("explorer-runs")
    return runs, build(runs, model_dir, other)
