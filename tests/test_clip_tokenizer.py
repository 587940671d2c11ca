"""clip.tokenize / SimpleTokenizer: OpenAI ids and semantics, checked against spec vectors and open_clip 3.3.0.

Our BPE is an independent implementation over the same merge file; open_clip's ids must match on ordinary
text (``shared/specs/clip_model.md`` §3.10) once its silent truncation and int64 output are accounted for.
"""

from __future__ import annotations

import open_clip
import pytest
import torch

from vlprompt import clip
from vlprompt.clip import clip as clip_module
from vlprompt.clip.simple_tokenizer import SimpleTokenizer, bytes_to_unicode

CORPUS = [
    "a photo of a cat",
    "Hello, World! it's 2024 -- (really?) [yes]; 3.14 % & $5,000",
    "naïve café crème brûlée, Ångström, Ærøskøbing, façade, jalapeño",
    "HTML &amp; entities: &lt;b&gt;bold&lt;/b&gt; &quot;quoted&quot; &#39;apos&#39; &amp;amp; &eacute;",
    "<b>literal tags</b> stop ftfy's unescaping, so only the double html.unescape turns &amp;amp; into &",
    "   many \t\n spaces\u00a0nbsp\u2028line\u3000ideographic   ",
    "emoji 🐱🚀 and CJK 東京タワー 한국어 العربية",
    "control\x1cchars\x1fhere and mojibake cafÃ©",
    "don't you'll we've they're I'm he'd shan't",
    "ALL CAPS and MiXeD CaSe and under_score and hyphen-ated",
    "",
    "word " * 100,
    "supercalifragilisticexpialidocious " * 40,
]


def test_spec_vectors():
    """Test vectors of spec §3.9 (computed with OpenAI's tokenizer)."""
    assert clip.tokenize("a photo of a cat")[0, :8].tolist() == [49406, 320, 1125, 539, 320, 2368, 49407, 0]
    assert clip.tokenize("Hello World!")[0, :6].tolist() == [49406, 3306, 1002, 256, 49407, 0]
    assert clip.encode("a photo of a dog.") == [320, 1125, 539, 320, 1929, 269]
    assert clip.encode("naïve") == [1097, 35689, 563]
    assert clip.tokenize("word " * 100, truncate=True)[0, -3:].tolist() == [2653, 2653, 49407]


def test_vocabulary_layout():
    """49408 ids: byte symbols in table order, '</w>' variants, merges, then SOT/EOT (spec §3.3)."""
    tok = clip_module._tokenizer
    assert len(tok.encoder) == 49408 and len(tok.bpe_ranks) == 48894
    assert tok.encoder["<|startoftext|>"] == 49406 and tok.encoder["<|endoftext|>"] == 49407
    assert (tok.encoder["!"], tok.encoder["Ġ"], tok.encoder["Ń"], tok.encoder["!</w>"]) == (0, 220, 255, 256)
    assert (tok.encoder["in"], tok.encoder["th"], tok.encoder["jekyll</w>"]) == (512, 513, 49405)
    assert all(tok.decoder[i] == s for s, i in tok.encoder.items())
    table = bytes_to_unicode()
    assert (table[32], table[10], table[127], table[173]) == ("Ġ", chr(266), chr(289), chr(323))
    assert clip.get_tokenizer() is tok


def test_ids_match_open_clip_on_corpus():
    """Every corpus string gives open_clip's ids (truncate=True on our side); ours are int32."""
    ours = clip.tokenize(CORPUS, truncate=True)
    reference = open_clip.tokenize(CORPUS)
    assert ours.dtype == torch.int32 and ours.shape == (len(CORPUS), 77)
    assert torch.equal(ours.long(), reference)
    oc_tokenizer = open_clip.tokenizer.SimpleTokenizer()
    for text in CORPUS[:10]:
        assert clip.encode(text) == oc_tokenizer.encode(text), text


def test_overflow_raises_unless_truncate():
    """75 BPE tokens fit exactly; 76 raise naming the limit; truncate keeps 77 ids ending in EOT."""
    fits = clip.tokenize("a " * 75)
    assert fits[0, 0] == 49406 and fits[0, 76] == 49407 and (fits[0, 1:76] == 320).all()
    with pytest.raises(RuntimeError, match="too long for context length 77"):
        clip.tokenize("a " * 76)
    with pytest.raises(RuntimeError, match="too long for context length"):
        clip.tokenize(["short", CORPUS[-1]])
    cut = clip.tokenize(["short", CORPUS[-1]], truncate=True)
    assert cut[1, -1] == 49407 and (cut[1] != 0).all() and cut[1, :-1].max() < 49407
    assert clip.tokenize("a b", context_length=8).shape == (1, 8)


def test_literal_special_tokens_follow_openai():
    """OpenAI maps literal special strings to their ids; open_clip does not (documented divergence)."""
    assert clip.encode("<|startoftext|>hi<|endoftext|>") == [49406, 1883, 49407]
    assert open_clip.tokenizer.SimpleTokenizer().encode("<|startoftext|>hi<|endoftext|>") != [49406, 1883, 49407]


def test_decode_semantics_and_round_trip():
    """decode keeps specials, turns word ends into spaces; decode -> encode returns the ids (DPT's check)."""
    ids = clip.tokenize("Hello, World! it's 2024")[0]
    text = clip.decode(ids[: int(ids.argmax()) + 1])
    assert text == "<|startoftext|>hello , world ! it 's 2 0 2 4 <|endoftext|>"
    assert clip.decode(torch.tensor([320, 0, 0])) == "a !!"  # padding id 0 is "!"
    oc_tokenizer = open_clip.tokenizer.SimpleTokenizer()
    for sentence in CORPUS[:10]:
        body = clip.encode(sentence)
        assert clip.encode(clip.decode(body)) == body, sentence
        expected = oc_tokenizer.decode(body)
        assert clip.decode(body) == expected


def test_tokenizer_accepts_explicit_bpe_path_and_fails_clearly(tmp_path):
    """An explicit merge file is honoured; a missing one raises FileNotFoundError naming it."""
    tok = SimpleTokenizer(bpe_path=open_clip.tokenizer.default_bpe())
    assert tok.encode("a photo of a cat") == [320, 1125, 539, 320, 2368]
    with pytest.raises(FileNotFoundError, match="missing.txt.gz"):
        SimpleTokenizer(bpe_path=str(tmp_path / "missing.txt.gz"))
