"""A small byte-level BPE tokenizer carrying DeepSeek-V3.2's special tokens, for generated checkpoints.

The real V3.2 tokenizer is a 128K byte-level BPE with these added tokens (ids in the real vocabulary):
  0 <｜begin▁of▁sentence｜> (bos)   1 <｜end▁of▁sentence｜> (eos, also pad)   2 <｜▁pad▁｜>
  128798 <think>  128799 </think>  128800-2 FIM  128803 <｜User｜>  128804 <｜Assistant｜>  128805 <|EOT|>
  128806-14 tool-call markers (<｜tool▁calls▁begin｜> ... <｜tool▁sep｜>)
It ships no Jinja chat template: its chat encoding is Python (`encoding_dsv32.py`), which vLLM applies in its
`deepseek_v32` tokenizer mode; that code only needs the marker strings above to be single tokens.

Ours keeps bos/eos/pad at ids 0/1/2 and puts the other markers right after a BPE vocabulary trained (with the
`tokenizers` library, no download) on a small embedded corpus, so `len(tokenizer) <= cfg.vocab_size`.
As in the real checkpoint, the embedding matrix may have more rows than the tokenizer has tokens.
Ids other than bos/eos differ from the real ones: look them up by string, never hard-code them.
"""
from __future__ import annotations

import json
import os

BOS = "<｜begin▁of▁sentence｜>"
EOS = "<｜end▁of▁sentence｜>"
PAD = "<｜▁pad▁｜>"
# Added tokens after the BPE vocabulary, in the real vocabulary's order (128798..128814).
# `special` follows the real tokenizer_config.json: only the control tokens are "special" (skipped on decode);
# the chat/tool/think markers stay in decoded text so the engines' reasoning and tool parsers can see them.
TAIL_TOKENS: list[tuple[str, bool]] = [
    ("<think>", False),
    ("</think>", False),
    ("<｜fim▁hole｜>", False),
    ("<｜fim▁begin｜>", False),
    ("<｜fim▁end｜>", False),
    ("<｜User｜>", False),
    ("<｜Assistant｜>", False),
    ("<|EOT|>", True),
    ("<｜tool▁calls▁begin｜>", False),
    ("<｜tool▁calls▁end｜>", False),
    ("<｜tool▁call▁begin｜>", False),
    ("<｜tool▁call▁end｜>", False),
    ("<｜tool▁outputs▁begin｜>", False),
    ("<｜tool▁outputs▁end｜>", False),
    ("<｜tool▁output▁begin｜>", False),
    ("<｜tool▁output▁end｜>", False),
    ("<｜tool▁sep｜>", False),
]
HEAD_TOKENS = [BOS, EOS, PAD]  # ids 0, 1, 2
SPECIAL_TOKENS = HEAD_TOKENS + [t for t, _ in TAIL_TOKENS]
MIN_VOCAB = len(HEAD_TOKENS) + 256 + len(TAIL_TOKENS)  # the 256 byte-level symbols must fit

# Training text for the BPE merges: original prose, code and numbers so common English words, punctuation,
# indentation and digits get merged. Changing it changes every generated tokenizer (and the cached tiny one).
_CORPUS = r"""
The quick brown fox jumps over the lazy dog. A small model is still a model: it reads tokens, mixes them
through attention and experts, and writes one token at a time. When the weights are random the words it
writes are random too, but the machinery is the same machinery that serves the large model.
Hello! How are you today? I am fine, thank you. What is the weather like where you are? It is sunny and
warm here, with a light wind from the west. Tomorrow there will be rain in the morning and clouds later.
Once upon a time there was a little town by the sea. Every morning the fishermen went out in their boats,
and every evening they came back with nets full of fish. The children ran along the beach and watched the
boats come in, and the old men sat on the benches and talked about the weather, the price of bread and the
news from the city. One day a stranger arrived with a heavy bag and a strange map. Nobody knew who he was.
To make bread you need flour, water, salt and yeast. Mix them, knead the dough for ten minutes, let it rise
for an hour, shape it, let it rise again, and bake it in a hot oven until the crust is brown and crisp.
Question: what is two plus two? Answer: two plus two is four. Question: what is the capital of France?
Answer: the capital of France is Paris. Please explain your reasoning step by step before you answer.
Let me think about this. First, we need to understand the problem. Then we can try a few simple cases,
look for a pattern, and finally prove that the pattern holds in general. Therefore the answer is 42.
The numbers are 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 100, 128, 256, 512, 1024, 2048, 4096 and 65536.
In 2025 the meeting took place on March 14 at 9:30 am; 37 people came and 12.5% of them stayed late.
def add(a, b):
    return a + b

for i in range(10):
    if i % 2 == 0:
        print(f"{i} is even")
    else:
        print(f"{i} is odd")

class Node:
    def __init__(self, value, next=None):
        self.value = value
        self.next = next

{"name": "get_weather", "arguments": {"city": "Berlin", "unit": "celsius"}}
{"role": "user", "content": "What is the weather in Berlin?"}
<html><body><p>This is a paragraph.</p></body></html>
SELECT name, count(*) FROM users WHERE age > 18 GROUP BY name ORDER BY count(*) DESC;
The system is designed to be simple, fast and correct. Each part does one thing and does it well, and the
parts are tested against each other so that a mistake in one is caught by the others. We measure before we
optimise, and we write down what we measured, so that the next person can check it and do better.
Thank you for your help. You are welcome! Have a nice day, and see you again soon.
"""


def _check_vocab_size(vocab_size: int) -> None:
    from .config import ConfigError
    if vocab_size < MIN_VOCAB:
        raise ConfigError(f"vocab_size={vocab_size}: the byte-level tokenizer needs at least {MIN_VOCAB} ids "
                          f"(256 bytes + {len(SPECIAL_TOKENS)} special tokens)")


def build_tokenizer(vocab_size: int):
    """A `tokenizers.Tokenizer` (byte-level BPE) with len <= vocab_size; bos id 0, eos id 1."""
    _check_vocab_size(vocab_size)
    try:
        from tokenizers import (AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, processors,
                                trainers)
    except ImportError as e:
        raise ImportError("writing a checkpoint's tokenizer needs the `tokenizers` package "
                          "(pip install tokenizers; vLLM and SGLang already depend on it)") from e

    tok = Tokenizer(models.BPE(byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(r"\p{N}{1,3}"), behavior="isolated"),  # digits in groups of at most 3
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
    ])
    tok.decoder = decoders.ByteLevel()
    # Keep a few embedding rows beyond the tokenizer, as the real checkpoint does (129280 rows, 128815 tokens).
    spare = vocab_size // 64 if vocab_size - vocab_size // 64 >= MIN_VOCAB else 0
    bpe_size = vocab_size - spare - len(TAIL_TOKENS)
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_size, min_frequency=1, show_progress=False,
        special_tokens=[AddedToken(t, special=True, normalized=False) for t in HEAD_TOKENS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS.strip().split("\n"), trainer=trainer)
    tok.add_tokens([AddedToken(t, special=s, normalized=False) for t, s in TAIL_TOKENS])
    tok.add_special_tokens([AddedToken(t, special=s, normalized=False) for t, s in TAIL_TOKENS if s])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS}:0 $A:0", pair=f"{BOS}:0 $A:0 {BOS}:1 $B:1", special_tokens=[(BOS, 0)])
    for i, t in enumerate(HEAD_TOKENS):
        assert tok.token_to_id(t) == i, (t, tok.token_to_id(t))
    assert tok.get_vocab_size(with_added_tokens=True) <= vocab_size
    return tok


def tokenizer_config(model_max_length: int) -> dict:
    """tokenizer_config.json in the real V3.2 form (no chat_template: the chat encoding is Python code)."""
    return {
        "add_bos_token": True,
        "add_eos_token": False,
        "bos_token": {"__type": "AddedToken", "content": BOS, "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
        "eos_token": {"__type": "AddedToken", "content": EOS, "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
        "pad_token": {"__type": "AddedToken", "content": EOS, "lstrip": False, "normalized": True,
                      "rstrip": False, "single_word": False},
        "unk_token": None,
        "clean_up_tokenization_spaces": False,
        "legacy": True,
        "model_max_length": model_max_length,
        "sp_model_kwargs": {},
        "tokenizer_class": "LlamaTokenizerFast",
    }


def write_tokenizer(out_dir: str, vocab_size: int, model_max_length: int) -> int:
    """Write tokenizer.json + tokenizer_config.json into out_dir; returns the number of tokens."""
    tok = build_tokenizer(vocab_size)
    tok.save(os.path.join(out_dir, "tokenizer.json"))
    cfg = tokenizer_config(model_max_length)
    vocab = tok.get_vocab(with_added_tokens=True)
    cfg["added_tokens_decoder"] = {
        str(vocab[t]): {"content": t, "lstrip": False, "normalized": False, "rstrip": False,
                        "single_word": False, "special": special}
        for t, special in [(t, True) for t in HEAD_TOKENS] + TAIL_TOKENS}
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w", encoding="utf-8") as f:
        json.dump(cfg, f, indent=2, ensure_ascii=False)
        f.write("\n")
    return tok.get_vocab_size(with_added_tokens=True)
