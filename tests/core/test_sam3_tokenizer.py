"""Our CLIP tokenizer (SAM 3's text prompts) against the sam3 package's, on the shipped vocabulary."""

from __future__ import annotations

import random

import pytest
import torch

from helpers.official_sam3 import sam3_tokenizer
from sam_core.models.sam3.tokenizer import VOCAB_PATH, ClipTokenizer

HAND_WRITTEN = [
    "building", "a building", "every nucleus", "red car", "Trees", "PONDS", "the cat's toy", "they're here",
    "we'll see", "I'd like", "you've got", "I'm", "don't", "swimming-pool", "solar_panel", "3 boats", "42",
    "2024-05-01", "x=3.14", "e-mail: a@b.com", "(round) [square] {curly}", "!!!", "?", "...", "  spaced   out  ",
    "tab\tand\nnewline", "&amp; &lt;tag&gt; &amp;amp;", "“curly quotes”", "‘single’", "naïve café", "Ærøskøbing",
    "straße", "Straße", "ﬁsh ﬂow", "ｆｕｌｌｗｉｄｔｈ", "Ｔｏｋｙｏ", "東京タワー", "细胞核", "клетка", "κύτταρο",
    "خلية", "세포", "🐱 cat", "👍🏽", "a\u00a0non-breaking space", "soft\u00adhyphen", "zero\u200bwidth",
    "Ã©tÃ©", "mojibake: Ã¼ber", "\u0301accent first", "e\u0301", "ǅ title case", "Ⅻ roman", "½ half", "x²",
    "C++", "#hashtag", "@mention", "50%", "$100", "€20", "a/b\\c", "<start_of_text>", "<END_OF_TEXT> inside",
    "", " ", "a", "Z", "0", "-", "'s", "'", "''", "a'b", "rock'n'roll", "o'clock", "nucleus" * 20,
    "one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen sixteen "
    "seventeen eighteen nineteen twenty twenty-one twenty-two twenty-three twenty-four twenty-five",
]

_POOL = (
    "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789     "
    ".,;:!?'\"-_()[]{}<>/\\@#$%^&*+=~`|"
    "éèêëàâäôöûüçñßøåæœÉÀÇ" "ΑαΒβΓγЖжЯя" "中文字日本語한국어" "😀🌍🔬" "“”‘’–—…" "\u00a0\t\n" "ﬁﬂｆＡ½²"
)
_WORDS = ["building", "tree", "road", "cell", "nucleus", "water", "field", "roof", "car", "boat", "the", "of", "and"]


def _random_strings(count: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    texts = []
    for index in range(count):
        if index % 3 == 0:
            texts.append(" ".join(rng.choice(_WORDS) for _ in range(rng.randint(1, 6))))
        else:
            texts.append("".join(rng.choice(_POOL) for _ in range(rng.randint(1, 40))))
    return texts


TEXTS = HAND_WRITTEN + _random_strings(340)


@pytest.fixture(scope="module")
def tokenizers():
    return ClipTokenizer(), sam3_tokenizer()


def test_vocabulary_is_shipped_with_its_licence():
    assert VOCAB_PATH.is_file() and VOCAB_PATH.stat().st_size == 1_356_917
    licence = (VOCAB_PATH.parent / "LICENSE-bpe_simple_vocab_16e6.txt").read_text()
    assert "MIT" in licence and "Permission is hereby granted" in licence


def test_token_ids_equal_sam3_on_hundreds_of_strings(tokenizers):
    ours, reference = tokenizers
    assert len(TEXTS) >= 400
    assert ours.vocab_size == reference.vocab_size == 49408
    for text in TEXTS:
        assert ours.encode(text) == reference.encode(text), repr(text)


def test_framed_and_truncated_ids_equal_sam3(tokenizers):
    ours, reference = tokenizers
    for context_length in (32, 8):
        assert torch.equal(ours(TEXTS, context_length=context_length), reference(TEXTS, context_length=context_length))
    long_text = "nucleus " * 40
    assert ours.count(long_text) == len(reference.encode(long_text)) + 2 > 32
    assert ours([long_text])[0, -1].item() == ours.end_id == 49407
