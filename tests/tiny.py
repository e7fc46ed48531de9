"""Tiny randomly initialised models and a character tokenizer: architectures covered in milliseconds, offline."""

from __future__ import annotations

import string

import torch
import transformers as T
from tokenizers import Tokenizer, models, pre_tokenizers

from sparsescope.models import LoadedModel, load_model

VOCAB = 128


def char_tokenizer() -> T.PreTrainedTokenizerFast:
    """One token per character (printable ASCII), with pad/eos; needs no download."""
    chars = ["<pad>", "<eos>", "<unk>"] + list(dict.fromkeys(string.printable))
    tok = Tokenizer(models.WordLevel({c: i for i, c in enumerate(chars)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    return T.PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


CONFIGS = {
    "llama": lambda: T.LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "qwen2": lambda: T.Qwen2Config(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256),
    "gpt2": lambda: T.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                 bos_token_id=1, eos_token_id=1),
    "gpt_neox": lambda: T.GPTNeoXConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                        num_attention_heads=4, max_position_embeddings=256),
    "opt": lambda: T.OPTConfig(vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2,
                               num_attention_heads=4, word_embed_proj_dim=32, max_position_embeddings=256),
    "bert": lambda: T.BertConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=4, max_position_embeddings=256),
}


def tiny_model(arch: str = "llama", seed: int = 0, dtype=torch.float32) -> LoadedModel:
    """A tiny random model of ``arch`` with eager attention (so attention patterns are observable)."""
    torch.manual_seed(seed)
    config = CONFIGS[arch]()
    config._attn_implementation = "eager"
    cls = T.AutoModel if arch == "bert" else T.AutoModelForCausalLM
    model = cls.from_config(config, attn_implementation="eager").to(dtype)
    return load_model((model, char_tokenizer()))
