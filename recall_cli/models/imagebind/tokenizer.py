"""The CLIP byte-pair-encoding tokenizer that ImageBind's text trunk uses (77-token window).

A faithful re-implementation of CLIP's `simple_tokenizer.py` (as vendored by ImageBind in
`multimodal_preprocessors.SimpleTokenizer`): ftfy + HTML unescape, whitespace squeeze, lower-case,
the same pre-tokenisation regex, byte-level BPE with the shipped merges, `<|startoftext|>` ...
`<|endoftext|>`, truncation to 76 tokens + EOT, zero padding.  The vocabulary file is package data
(`data/bpe_simple_vocab_16e6.txt.gz`, MIT, see `data/LICENSE-NOTICES.txt`).

It also prepares text for the model, as media/ prepares images, video and audio: one text -> [77]
ids (tokenize_text), a text file's contents -> chunks that each fit the window (chunk_text).
"""

from __future__ import annotations

import gzip
import html
from functools import lru_cache
from importlib import resources

CONTEXT_LENGTH = 77
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
MAX_TEXT_CHUNKS = 64  # chunks of <= 75 BPE tokens taken from one text file
TEXT_CHUNK_TOKENS = 75  # 77 minus start and end tokens


@lru_cache
def bytes_to_unicode() -> dict[int, str]:
    """Reversible map from utf-8 bytes to printable unicode characters (CLIP's table)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs], strict=True))


def _pairs(word: tuple[str, ...]) -> set[tuple[str, str]]:
    return {(a, b) for a, b in zip(word, word[1:], strict=False)}


def _clean(text: str) -> str:
    import ftfy
    import regex

    text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return regex.sub(r"\s+", " ", text).strip()


class ClipTokenizer:
    def __init__(self, context_length: int = CONTEXT_LENGTH):
        import regex

        raw = resources.files("recall_cli.models.imagebind").joinpath("data", VOCAB_FILE).read_bytes()
        merges = gzip.decompress(raw).decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        vocab = list(bytes_to_unicode().values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {tok: i for i, tok in enumerate(vocab)}
        self.decoder = {i: tok for tok, i in self.encoder.items()}
        self.bpe_ranks = {m: i for i, m in enumerate(merges)}
        self.byte_encoder = bytes_to_unicode()
        self.byte_decoder = {v: k for k, v in self.byte_encoder.items()}
        self.cache = {"<|startoftext|>": "<|startoftext|>", "<|endoftext|>": "<|endoftext|>"}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )
        self.context_length = context_length
        self.sot = self.encoder["<|startoftext|>"]
        self.eot = self.encoder["<|endoftext|>"]

    def bpe(self, token: str) -> str:
        if token in self.cache:
            return self.cache[token]
        word = tuple(token[:-1]) + (token[-1] + "</w>",)
        pairs = _pairs(word)
        if not pairs:
            return token + "</w>"
        while True:
            bigram = min(pairs, key=lambda p: self.bpe_ranks.get(p, float("inf")))
            if bigram not in self.bpe_ranks:
                break
            first, second = bigram
            new_word: list[str] = []
            i = 0
            while i < len(word):
                try:
                    j = word.index(first, i)
                except ValueError:
                    new_word.extend(word[i:])
                    break
                new_word.extend(word[i:j])
                i = j
                if word[i] == first and i < len(word) - 1 and word[i + 1] == second:
                    new_word.append(first + second)
                    i += 2
                else:
                    new_word.append(word[i])
                    i += 1
            word = tuple(new_word)
            if len(word) == 1:
                break
            pairs = _pairs(word)
        result = " ".join(word)
        if len(self.cache) < 100_000:
            self.cache[token] = result
        return result

    def encode(self, text: str) -> list[int]:
        """BPE ids of `text` without start/end tokens."""
        ids: list[int] = []
        for token in self.pat.findall(_clean(text).lower()):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token).split(" "))
        return ids

    def decode(self, ids: list[int]) -> str:
        text = "".join(self.decoder[i] for i in ids)
        return bytearray(self.byte_decoder[c] for c in text).decode("utf-8", errors="replace").replace("</w>", " ")

    def __call__(self, texts: str | list[str]):
        """[N, 77] long tensor: SOT, ids (truncated to 75), EOT, zeros."""
        import torch

        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = ([self.sot] + self.encode(text))[: self.context_length - 1] + [self.eot]
            out[row, : len(ids)] = torch.tensor(ids)
        return out


@lru_cache(maxsize=1)
def get_tokenizer() -> ClipTokenizer:
    return ClipTokenizer()


def tokenize_text(text: str):
    """[77] long tensor of CLIP BPE ids."""
    return get_tokenizer()(text)[0]


def chunk_text(text: str, max_tokens: int = TEXT_CHUNK_TOKENS, max_chunks: int = MAX_TEXT_CHUNKS) -> list[str]:
    """Split text into whitespace-delimited chunks of at most `max_tokens` BPE tokens (a single
    longer word becomes its own, truncated, chunk); at most `max_chunks` chunks."""
    tok = get_tokenizer()
    chunks: list[str] = []
    words: list[str] = []
    count = 0
    for word in text.split():
        n = len(tok.encode(word))
        if words and count + n > max_tokens:
            chunks.append(" ".join(words))
            if len(chunks) >= max_chunks:
                return chunks
            words, count = [], 0
        words.append(word)
        count += n
    if words:
        chunks.append(" ".join(words))
    return chunks[:max_chunks]
