"""The language model's tokenizer: byte-level BPE trained on a repository's own files, separate from the encoder's.

Code is whitespace-sensitive, so the tokenizer must give back exactly the text it was given: a
byte-level pre-tokenizer without a prefix space, no normaliser and a byte-level decoder make
`decode(encode(t)) == t` hold for every string, newlines, tabs, CRLF and unicode included. Special
tokens are never read from the text (a file may well contain the string `<|endoftext|>`); the end
of a file is marked by `encode_file` alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from grounding.errors import EncoderNotFound

EOS = "<|endoftext|>"
PAD = "<|pad|>"
_EOS_FALLBACKS = (EOS, "</s>", "<eos>", "<|eos|>")


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's table: each byte as the printable character byte-level BPE writes it with."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF = {c: b for b, c in _bytes_to_unicode().items()}


class LMTokenizer:
    """A `tokenizers.Tokenizer` with the end-of-file and padding ids a RETRO model needs."""

    def __init__(self, tokenizer: Tokenizer, *, name: str, eos_id: int, pad_id: int) -> None:
        # Text that spells a special token stays text: only encode_file marks a file's end.
        tokenizer.encode_special_tokens = True
        self.tokenizer = tokenizer
        self.name = name  # the directory it was loaded from or saved to; "" until saved
        self.eos_id = eos_id
        self.pad_id = pad_id
        self._special_ids = {eos_id, pad_id} | {
            i for i, added in tokenizer.get_added_tokens_decoder().items() if added.special
        }

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def digest(self) -> str:
        """A hash of the vocabulary, merges and settings: two tokenizers with equal digests give equal ids."""
        return hashlib.sha256(self.tokenizer.to_str().encode("utf-8")).hexdigest()

    def encode(self, text: str) -> list[int]:
        """The ids of `text`, with no special token added."""
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def encode_spans(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        """The ids of `text` and the character span of each; the pieces of a split character share its span."""
        encoding = self.tokenizer.encode(text, add_special_tokens=False)
        return encoding.ids, encoding.offsets

    def encode_file(self, text: str) -> list[int]:
        """A file's ids followed by eos, so that a model learns where files end."""
        return [*self.encode(text), self.eos_id]

    def decode(self, ids: Sequence[int]) -> str:
        """The text of `ids`; eos and padding decode to nothing."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_bytes(self, token_id: int) -> bytes:
        """The UTF-8 bytes one token stands for (none for eos and padding): the unit of bits per byte."""
        token = self.tokenizer.id_to_token(token_id)
        if token is None or token_id in self._special_ids:
            return b""
        if all(c in _BYTE_OF for c in token):
            return bytes(_BYTE_OF[c] for c in token)
        return self.decode([token_id]).encode("utf-8")  # not a byte-level vocabulary: the best guess

    def save(self, directory: str | Path) -> Path:
        """Write tokenizer.json and a tokenizer_config.json naming eos and pad (readable by transformers too)."""
        directory = Path(directory).resolve()
        directory.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save(str(directory / "tokenizer.json"))
        config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "eos_token": self.tokenizer.id_to_token(self.eos_id),
            "pad_token": self.tokenizer.id_to_token(self.pad_id),
            "clean_up_tokenization_spaces": False,  # transformers' default would break the round trip
        }
        (directory / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        self.name = str(directory)
        return directory

    def __repr__(self) -> str:
        return f"LMTokenizer(name={self.name!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


def train_tokenizer(texts: Iterable[str], *, vocab_size: int = 8192, min_frequency: int = 2) -> LMTokenizer:
    """Byte-level BPE trained on `texts`, with `<|endoftext|>` (eos) and `<|pad|>`; unsaved (name "")."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tokenizer.decoder = decoders.ByteLevel()
    tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOS, PAD],
        # Every byte in the vocabulary from the start: no text can meet an unknown symbol.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return LMTokenizer(tokenizer, name="", eos_id=tokenizer.token_to_id(EOS), pad_id=tokenizer.token_to_id(PAD))


def load_tokenizer(path: str | Path) -> LMTokenizer:
    """A tokenizer saved by `LMTokenizer.save`, or any local Hugging Face tokenizer directory or tokenizer.json."""
    path = Path(path).expanduser()
    if not path.exists():
        raise EncoderNotFound(f"no tokenizer at {path}; train one with train_tokenizer and save it there")
    directory = path.parent if path.is_file() else path
    file = path if path.is_file() else path / "tokenizer.json"
    if file.is_file():
        tokenizer = Tokenizer.from_file(str(file))
    else:
        tokenizer = _backend_of(directory)
    config = _special_tokens(directory)
    eos = _token_id(tokenizer, config.get("eos_token"), _EOS_FALLBACKS)
    if eos is None:
        raise EncoderNotFound(
            f"the tokenizer at {path} has no end-of-text token; name one as eos_token in its tokenizer_config.json"
        )
    pad = _token_id(tokenizer, config.get("pad_token"), (PAD, "<pad>"))
    return LMTokenizer(tokenizer, name=str(path.resolve()), eos_id=eos, pad_id=eos if pad is None else pad)


def _backend_of(directory: Path) -> Tokenizer:
    """The fast tokenizer transformers builds from a directory without tokenizer.json (vocab.json + merges.txt)."""
    from transformers import AutoTokenizer

    try:
        loaded = AutoTokenizer.from_pretrained(str(directory), local_files_only=True, use_fast=True)
    except (OSError, ValueError) as err:
        raise EncoderNotFound(f"no Hugging Face tokenizer in {directory}: {err}") from err
    backend = getattr(loaded, "backend_tokenizer", None)
    if backend is None:
        raise EncoderNotFound(f"the tokenizer in {directory} has no fast (tokenizers) form")
    return backend


def _special_tokens(directory: Path) -> dict[str, str]:
    """eos_token and pad_token as tokenizer_config.json or special_tokens_map.json name them."""
    found: dict[str, str] = {}
    for name in ("special_tokens_map.json", "tokenizer_config.json"):
        file = directory / name
        if not file.is_file():
            continue
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for key in ("eos_token", "pad_token"):
            value = data.get(key)
            if isinstance(value, dict):  # {"content": "<|endoftext|>", ...}
                value = value.get("content")
            if isinstance(value, str):
                found[key] = value
    return found


def _token_id(tokenizer: Tokenizer, named: str | None, fallbacks: Sequence[str]) -> int | None:
    for token in (named, *fallbacks):
        if token is not None and (found := tokenizer.token_to_id(token)) is not None:
            return found
    return None
