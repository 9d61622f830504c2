"""The LM tokenizer gives back exactly the text it was given, and survives saving and reloading."""

from __future__ import annotations

import json
import random

import pytest

from grounding.errors import EncoderNotFound
from grounding.index.lm_tokenizer import EOS, PAD, LMTokenizer, load_tokenizer, train_tokenizer
from tests.conftest import package_tree

SYNTHETIC = [
    "",
    "\n",
    "a\r\nb\r\n\r\n",
    "lone\rcarriage\r",
    "\tdef f():\n\t\treturn 1\t \n",
    "trailing spaces   \nand tabs\t\t\n   \n",
    "        deeply\n                indented\n",
    " leading space",
    "  two leading",
    "héllo wörld — ünïcödé\n",
    "emoji 🎉🐍 and CJK 世界 and RTL שלום\n",
    "combining e\u0301 and zero\u200bwidth\ufeffbom",
    "<|endoftext|> in a file, and <|pad|> too\n",
    "<|endoftext|>",
    "nul\x00byte and \x7f del and \x0c form feed",
    "x" * 5000,
    " " * 300,
    "\n" * 50 + "end",
]


def real_files() -> list[str]:
    paths = sorted([*package_tree("requests").rglob("*.py"), *package_tree("click").rglob("*.py")])
    texts = [p.read_text(encoding="utf-8") for p in paths]
    assert len(texts) > 30
    return texts


def random_text(rng: random.Random, n: int) -> str:
    """Mostly code-like characters, with any code point except surrogates mixed in."""
    pool = "abcXYZ019_ ()[]{}:.,'\"#=+-*/\\\t\n\r"
    out = []
    for _ in range(n):
        if rng.random() < 0.8:
            out.append(rng.choice(pool))
        else:
            cp = rng.randrange(0x110000)
            out.append(chr(cp if not 0xD800 <= cp <= 0xDFFF else 0x20))
    return "".join(out)


@pytest.fixture(scope="module")
def trained() -> LMTokenizer:
    return train_tokenizer(real_files(), vocab_size=2048)


def test_round_trip_is_byte_exact_on_real_files_and_edge_cases(trained):
    texts = real_files() + SYNTHETIC
    rng = random.Random(0)
    texts += [random_text(rng, rng.randrange(1, 400)) for _ in range(200)]
    failures = [t[:60] for t in texts if trained.decode(trained.encode(t)) != t]
    assert not failures, failures[:3]
    # Compression, not one token per byte: the merges learned something.
    code = real_files()[0]
    assert len(trained.encode(code)) < len(code.encode("utf-8")) / 2


def test_special_tokens_are_never_read_from_text(trained):
    assert trained.vocab_size == 2048
    assert trained.eos_id != trained.pad_id
    ids = trained.encode_file("a <|endoftext|> b <|pad|>\n")
    assert ids[-1] == trained.eos_id
    assert trained.eos_id not in ids[:-1] and trained.pad_id not in ids
    assert trained.decode(ids) == "a <|endoftext|> b <|pad|>\n"  # eos decodes to nothing
    assert trained.decode([*trained.encode("x"), trained.pad_id, trained.pad_id]) == "x"


def test_token_bytes_add_up_to_the_file_bytes(trained):
    for text in real_files()[:20] + SYNTHETIC:
        ids = trained.encode_file(text)
        assert b"".join(trained.token_bytes(i) for i in ids) == text.encode("utf-8")
    assert trained.token_bytes(trained.eos_id) == b"" == trained.token_bytes(trained.pad_id)


def test_spans_locate_every_token_in_the_text(trained):
    text = "x = '🎉'\r\n\tyé  \n"
    ids, spans = trained.encode_spans(text)
    assert ids == trained.encode(text)
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    assert all(a[1] <= b[0] or a == b for a, b in zip(spans, spans[1:]))  # in order; a split character shares


def test_saved_tokenizer_reloads_with_the_same_ids(trained, tmp_path):
    assert trained.name == ""
    directory = trained.save(tmp_path / "tok")
    assert trained.name == str(directory) and (directory / "tokenizer.json").is_file()
    loaded = load_tokenizer(directory)
    assert loaded.name == str(directory.resolve())
    assert (loaded.vocab_size, loaded.eos_id, loaded.pad_id) == (trained.vocab_size, trained.eos_id, trained.pad_id)
    assert loaded.digest == trained.digest
    for text in real_files()[:10] + SYNTHETIC:
        assert loaded.encode_file(text) == trained.encode_file(text)
        assert loaded.decode(loaded.encode(text)) == text
    # The saved file alone is enough too.
    assert load_tokenizer(directory / "tokenizer.json").encode("import os\n") == trained.encode("import os\n")


def test_a_hugging_face_tokenizer_directory_loads_with_its_own_eos(trained, tmp_path):
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    hf = PreTrainedTokenizerFast(tokenizer_object=trained.tokenizer, eos_token=EOS, pad_token=PAD)
    hf.save_pretrained(tmp_path / "hf")
    loaded = load_tokenizer(tmp_path / "hf")
    assert loaded.eos_id == trained.eos_id and loaded.pad_id == trained.pad_id
    assert loaded.encode("def f(x):\n    return x\n") == trained.encode("def f(x):\n    return x\n")

    # Our own saved directory reads in transformers as well, and round-trips there too.
    saved = trained.save(tmp_path / "ours")
    auto = AutoTokenizer.from_pretrained(str(saved), local_files_only=True)
    assert auto.eos_token_id == trained.eos_id
    assert auto.decode(auto.encode("  x\r\n\ty ", add_special_tokens=False)) == "  x\r\n\ty "

    # GPT-2 style: the eos named as a dict in special_tokens_map.json, no pad (it falls back to eos).
    plain = tmp_path / "gpt2-like"
    plain.mkdir()
    trained.tokenizer.save(str(plain / "tokenizer.json"))
    (plain / "special_tokens_map.json").write_text(json.dumps({"eos_token": {"content": EOS, "lstrip": False}}))
    vocab = json.loads((plain / "tokenizer.json").read_text())
    vocab["added_tokens"] = [t for t in vocab["added_tokens"] if t["content"] != PAD]
    vocab["model"]["vocab"].pop(PAD)
    (plain / "tokenizer.json").write_text(json.dumps(vocab))
    gpt2 = load_tokenizer(plain)
    assert gpt2.eos_id == trained.eos_id and gpt2.pad_id == gpt2.eos_id


def test_missing_or_eos_less_tokenizers_are_explained(trained, tmp_path):
    with pytest.raises(EncoderNotFound, match="no tokenizer at"):
        load_tokenizer(tmp_path / "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EncoderNotFound):
        load_tokenizer(empty)
    no_eos = train_tokenizer(["abc abc abd"], vocab_size=300)
    no_eos.tokenizer.save(str(tmp_path / "bare.json"))
    data = json.loads((tmp_path / "bare.json").read_text())
    data["added_tokens"] = []
    for token in (EOS, PAD):
        data["model"]["vocab"].pop(token)
    (tmp_path / "bare.json").write_text(json.dumps(data))
    with pytest.raises(EncoderNotFound, match="no end-of-text token"):
        load_tokenizer(tmp_path / "bare.json")
