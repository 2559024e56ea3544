"""Tiny random models for tests: a config of a few layers and a tokenizer trained on the spot."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Iterable

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedModel

SAMPLE_TEXTS = [
    "great coffee, fast shipping", "the blender broke after a week", "手机电池很耐用，物流很快",
    "酒店早餐很难吃", "this tea tastes stale", "衣服质量不错，尺码合适", "refund took too long",
    "书的内容很好", "热水器安装师傅很专业", "the shampoo smells lovely", "平板屏幕有坏点",
]

# SmolLM2-Instruct's ChatML template, verbatim (a missing system message gets SmolLM's default one).
CHATML_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _save_random(model_class: type[PreTrainedModel], config: PretrainedConfig, out: Path, seed: int) -> Path:
    """Save ``model_class(config)`` with weights drawn from ``seed``."""
    import torch

    torch.manual_seed(seed)
    model_class(config).save_pretrained(out)
    return out


def make_tiny_encoder(out: str | Path, texts: Iterable[str] = SAMPLE_TEXTS, hidden: int = 32, layers: int = 2,
                      seed: int = 0) -> Path:
    """Write a random BERT encoder with a WordPiece tokenizer built from ``texts`` to ``out``.

    The vocabulary is the texts' characters (alone and as ``##`` continuations) and their words, in a fixed
    order, so the same texts always give the same tokenizer (tokenizers' WordPiece trainer breaks ties
    differently from one process to the next)."""
    from collections import Counter

    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    normalizer = normalizers.BertNormalizer(lowercase=True, handle_chinese_chars=True)
    pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    words = Counter(w for text in texts for w, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = sorted({c for w in words for c in w})
    pieces = specials + chars + [f"##{c}" for c in chars] + sorted((w for w in words if len(w) > 1),
                                                                   key=lambda w: (-words[w], w))
    tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer, tok.decoder = normalizer, pre_tokenizer, decoders.WordPiece()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]", model_max_length=128,
    ).save_pretrained(out)
    config = BertConfig(vocab_size=tok.get_vocab_size(), hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=2, intermediate_size=2 * hidden, max_position_embeddings=128)
    return _save_random(BertModel, config, out, seed)


def make_tiny_causal_lm(out: str | Path, texts: Iterable[str] = SAMPLE_TEXTS, seed: int = 0,
                        context: int = 256) -> Path:
    """Write a random 2-layer Llama with a byte-level BPE tokenizer trained on ``texts`` and SmolLM2's ChatML
    template and special tokens (bos ``<|im_start|>``, eos = pad ``<|im_end|>``), ``context`` positions, to ``out``."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # ids 0, 1, 2 as in SmolLM2
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())  # any text encodes
    tok.train_from_iterator(list(texts) * 2, trainer)
    PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>",
        unk_token="<|endoftext|>", chat_template=CHATML_TEMPLATE, model_max_length=context,
    ).save_pretrained(out)
    config = LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=context,
                         bos_token_id=1, eos_token_id=2, pad_token_id=2, tie_word_embeddings=True,
                         initializer_range=0.3)  # larger than usual, so that greedy replies vary
    return _save_random(LlamaForCausalLM, config, out, seed)
