"""CLIP's byte-level BPE tokenizer with OpenAI's exact semantics (Radford et al. 2021, arXiv:2103.00020).

The merge table ``bpe_simple_vocab_16e6.txt.gz`` is read from the installed ``open_clip_torch`` wheel (the same
bytes as openai/CLIP's copy), located without importing ``open_clip``.  The algorithm (byte-to-unicode table,
cleaning, pre-tokenisation, BPE merges, decoding) is implemented here so ids follow openai/CLIP, not open_clip,
where the two differ: special tokens are spelled ``<|startoftext|>``/``<|endoftext|>`` and are recognised in
input text, and whitespace is collapsed with the regex ``\\s+``.  Tests compare the ids against open_clip's tokenizer.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import logging
import os
from functools import lru_cache
from typing import Iterable, Optional

import ftfy
import regex

logger = logging.getLogger(__name__)

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
SOT_TEXT = "<|startoftext|>"  # id 49406
EOT_TEXT = "<|endoftext|>"  # id 49407
N_MERGES = 49152 - 256 - 2  # merges used by CLIP: vocab 49408 = 2*256 byte symbols + 48894 merges + 2 specials
END_OF_WORD = "</w>"
# Pre-tokenisation as openai/CLIP's regex: specials, contractions, letter runs, ONE digit, other non-space runs.
_PATTERN = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


@lru_cache()
def default_bpe() -> str:
    """Path of the BPE merge file inside the installed ``open_clip`` package (the package is not imported)."""
    spec = importlib.util.find_spec("open_clip")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for location in locations:
        path = os.path.join(location, BPE_FILENAME)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(f"{BPE_FILENAME} not found in the open_clip package; install open_clip_torch==3.3.0 "
                            "(pip install -e . in the repo root) or pass bpe_path=")


@lru_cache()
def bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable unicode character: 188 printable bytes map to themselves, the other 68 to chr(256+n).

    Insertion order (printable bytes first, then the remapped ones) defines token ids 0..255.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    remapped = [b for b in range(256) if b not in set(printable)]
    table = {b: chr(b) for b in printable}
    table.update({b: chr(256 + n) for n, b in enumerate(remapped)})
    return table


def get_pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    """Set of adjacent symbol pairs of ``word``."""
    return set(zip(word[:-1], word[1:]))


def basic_clean(text: str) -> str:
    """ftfy repair, HTML-unescape twice, strip."""
    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text))
    return text.strip()


def whitespace_clean(text: str) -> str:
    """Collapse every whitespace run to one space and strip."""
    return regex.sub(r"\s+", " ", text).strip()


def _read_merges(bpe_path: str) -> list[tuple[str, str]]:
    with gzip.open(bpe_path, "rt", encoding="utf-8") as f:
        lines = f.read().split("\n")
    return [tuple(line.split()) for line in lines[1:N_MERGES + 1]]  # line 0 is a header


class SimpleTokenizer:
    """OpenAI CLIP BPE tokenizer: ``encode(text) -> ids`` (no SOT/EOT added) and ``decode(ids) -> text``."""

    def __init__(self, bpe_path: Optional[str] = None) -> None:
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {char: byte for byte, char in self.byte_encoder.items()}
        merges = _read_merges(bpe_path or default_bpe())
        symbols = list(self.byte_encoder.values())
        vocab = symbols + [s + END_OF_WORD for s in symbols] + ["".join(pair) for pair in merges] + [SOT_TEXT, EOT_TEXT]
        self.encoder: dict[str, int] = {token: i for i, token in enumerate(vocab)}
        self.decoder: dict[int, str] = {i: token for token, i in self.encoder.items()}
        self.bpe_ranks: dict[tuple[str, str], int] = {pair: rank for rank, pair in enumerate(merges)}
        self.cache: dict[str, str] = {SOT_TEXT: SOT_TEXT, EOT_TEXT: EOT_TEXT}
        self.pat = regex.compile(_PATTERN, regex.IGNORECASE)
        self.sot_token_id = self.encoder[SOT_TEXT]
        self.eot_token_id = self.encoder[EOT_TEXT]

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def bpe(self, token: str) -> str:
        """Apply the merges to one byte-encoded pre-token; returns its symbols joined by spaces."""
        if token in self.cache:
            return self.cache[token]
        word = [*token[:-1], token[-1] + END_OF_WORD]
        while len(word) > 1:
            ranked = [(self.bpe_ranks[pair], pair) for pair in get_pairs(tuple(word)) if pair in self.bpe_ranks]
            if not ranked:
                break
            first, second = min(ranked)[1]
            merged: list[str] = []
            i = 0
            while i < len(word):  # merge every non-overlapping occurrence, left to right
                if i + 1 < len(word) and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        result = " ".join(word)
        self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        text = whitespace_clean(basic_clean(text)).lower()
        ids: list[int] = []
        for piece in self.pat.findall(text):
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[symbol] for symbol in self.bpe(chars).split(" "))
        return ids

    def decode(self, tokens: Iterable[int]) -> str:
        """Ids -> text; word ends become spaces, specials and padding (id 0 = "!") are kept as is."""
        chars = "".join(self.decoder[int(t)] for t in tokens)
        data = bytearray(self.byte_decoder[c] for c in chars)
        return data.decode("utf-8", errors="replace").replace(END_OF_WORD, " ")
