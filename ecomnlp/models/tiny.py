"""Tiny random models for tests: a config of a few layers and a tokenizer trained on the spot."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

SAMPLE_TEXTS = [
    "great coffee, fast shipping", "the blender broke after a week", "手机电池很耐用，物流很快",
    "酒店早餐很难吃", "this tea tastes stale", "衣服质量不错，尺码合适", "refund took too long",
    "书的内容很好", "热水器安装师傅很专业", "the shampoo smells lovely", "平板屏幕有坏点",
]


def make_tiny_encoder(out: str | Path, texts: Iterable[str] = SAMPLE_TEXTS, hidden: int = 32, layers: int = 2,
                      seed: int = 0) -> Path:
    """Write a random BERT encoder with a WordPiece tokenizer trained on ``texts`` to ``out``."""
    import torch
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    tok.train_from_iterator(list(texts) * 2, trainers.WordPieceTrainer(vocab_size=400, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    ).save_pretrained(out)
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    BertModel(config).save_pretrained(out)
    return out
