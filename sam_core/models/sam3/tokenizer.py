"""CLIP's byte-pair-encoding tokenizer, as SAM 3 uses it for its text prompts.

The merges come from ``sam_core/data/bpe_simple_vocab_16e6.txt.gz`` (CLIP's vocabulary, MIT licence,
see the LICENSE file beside it). Text is cleaned the way SAM 3 cleans it (``ftfy.fix_text``, HTML
entities decoded twice, runs of white space collapsed, lower case), split into words, numbers and
punctuation runs, and each piece is encoded byte by byte and merged by rank. Token ids equal the
``sam3`` package's tokenizer for the same text.
"""

from __future__ import annotations

import gzip
import html
from pathlib import Path
from typing import Optional, Sequence, Union

import ftfy
import regex
import torch

VOCAB_PATH = Path(__file__).resolve().parents[2] / "data" / "bpe_simple_vocab_16e6.txt.gz"

# CLIP keeps the first 48894 merges of the file (49152 ids = 512 byte symbols + merges + 2 specials)
_MERGES = 49152 - 256 - 2
START, END = "<start_of_text>", "<end_of_text>"
# words, single digits, runs of anything else that is not white space; English contractions apart
_SPLIT = regex.compile(r"""<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""", regex.IGNORECASE)
_SPACES = regex.compile(r"\s+")


def _byte_symbols() -> dict[int, str]:
    """The printable character standing for each byte (GPT-2/CLIP's reversible byte map), in vocabulary
    order: the printable bytes themselves first, then the others mapped to 256, 257, ..."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    symbols = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in symbols]
    symbols.update({b: chr(256 + n) for n, b in enumerate(others)})
    return symbols


def clean_text(text: str) -> str:
    """The text the way SAM 3 tokenizes it: mojibake and odd Unicode fixed (ftfy), HTML entities
    decoded, white space collapsed to single spaces, stripped, lower case."""
    text = html.unescape(html.unescape(ftfy.fix_text(text))).strip()
    return _SPACES.sub(" ", text).strip().lower()


class ClipTokenizer:
    """Text -> token ids with CLIP's vocabulary (49408 ids; 49406 starts a text, 49407 ends it)."""

    def __init__(self, vocab_path: Union[str, Path, None] = None) -> None:
        path = Path(vocab_path) if vocab_path is not None else VOCAB_PATH
        lines = gzip.decompress(path.read_bytes()).decode("utf-8").split("\n")
        merges = [tuple(line.split()) for line in lines[1 : _MERGES + 1]]
        byte_symbols = _byte_symbols()
        self._byte_symbol = [byte_symbols[b] for b in range(256)]
        symbols = list(byte_symbols.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
        self._ids = {token: index for index, token in enumerate(vocab)}
        self._ranks = {pair: rank for rank, pair in enumerate(merges)}
        self._pieces: dict[str, list[int]] = {}
        self.vocab_size = len(vocab)
        self.start_id = self._ids[START]
        self.end_id = self._ids[END]

    def _merge(self, piece: str) -> list[int]:
        """Ids of one pre-split piece (already mapped to byte symbols), merged by rank."""
        known = self._pieces.get(piece)
        if known is not None:
            return known
        if piece in (START, END):
            return [self._ids[piece]]
        word = [*piece[:-1], piece[-1] + "</w>"]
        while len(word) > 1:
            ranked = [(self._ranks.get(pair, _MERGES), i) for i, pair in enumerate(zip(word, word[1:]))]
            best = min(ranked)[0]
            if best == _MERGES:
                break
            first, second = next((word[i], word[i + 1]) for rank, i in ranked if rank == best)
            merged, i = [], 0
            while i < len(word):
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        ids = [self._ids[token] for token in word]
        self._pieces[piece] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without the start and end ids."""
        ids: list[int] = []
        for piece in _SPLIT.findall(clean_text(text)):
            ids.extend(self._merge("".join(self._byte_symbol[b] for b in piece.encode("utf-8"))))
        return ids

    def __call__(self, texts: Union[str, Sequence[str]], context_length: int = 32) -> torch.Tensor:
        """Ids of each text framed by the start and end ids, zero-padded to ``context_length``
        (int64, shape (len(texts), context_length)). A longer text is cut, keeping the end id last."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.start_id, *self.encode(text), self.end_id]
            if len(ids) > context_length:
                ids = ids[:context_length]
                ids[-1] = self.end_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out

    def count(self, text: str) -> int:
        """How many ids ``text`` takes including the start and end ids."""
        return len(self.encode(text)) + 2


def load_tokenizer(vocab_path: Optional[Union[str, Path]] = None) -> ClipTokenizer:
    """A tokenizer with the shipped vocabulary (or the file given)."""
    return ClipTokenizer(vocab_path)
