"""Streaming text generation on the tiny causal LM: HF parity (plain and LoRA), stops, sampling, prompt trimming."""
from __future__ import annotations

import copy
from types import SimpleNamespace

import pytest
import torch

from ecomnlp.generation import GenerationSettings, generate_text, prompt_ids, stream
from ecomnlp.models.tiny import make_tiny_causal_lm

EOS = 2
SYSTEM = {"role": "system", "content": "You answer questions about orders."}
CHAT = [SYSTEM, {"role": "user", "content": "Where is my tea?"}, {"role": "assistant", "content": "It ships today."},
        {"role": "user", "content": "手机电池很耐用吗？"}, {"role": "assistant", "content": "是的，物流很快"},
        {"role": "user", "content": "And the shampoo?"}]
PROMPTS = {"en": [{"role": "user", "content": "the blender broke after a week"}],
           "zh": [{"role": "user", "content": "手机电池很耐用吗"}], "chat": CHAT}
ZH_REPLY = "是的，物流很快 👍 吗"  # 👍 and 吗 are not in the tiny vocab: several byte tokens each


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm") / "model"))


@pytest.fixture(scope="module")
def model(tokenizer):
    """The tiny LM with its matrices redrawn larger: near-zero tied weights make greedy decoding only repeat
    the prompt's last token, these give varied (random-byte) replies."""
    from transformers import AutoModelForCausalLM

    lm = AutoModelForCausalLM.from_pretrained(tokenizer.name_or_path)
    torch.manual_seed(0)
    with torch.no_grad():
        for parameter in lm.parameters():
            if parameter.dim() == 2:
                parameter.normal_(std=0.3)
    return lm


class Scripted(torch.nn.Module):
    """The tiny LM (KV cache and all), made to emit ``script`` and then eos whatever the prompt."""

    def __init__(self, lm: torch.nn.Module, script: list[int]) -> None:
        super().__init__()
        self.lm, self.script, self.step = lm, script, 0
        self.config, self.generation_config = lm.config, copy.deepcopy(lm.generation_config)

    def forward(self, input_ids: torch.Tensor, **kwargs) -> SimpleNamespace:
        out = self.lm(input_ids=input_ids, **kwargs)
        logits = torch.zeros_like(out.logits)
        logits[0, -1, self.script[self.step] if self.step < len(self.script) else EOS] = 1.0
        self.step += 1
        return SimpleNamespace(logits=logits, cache=out.cache)


def ids_of(tokenizer, name: str) -> list[int]:
    return prompt_ids(tokenizer, PROMPTS[name], 200)


def hf_greedy(model, tokenizer, ids: list[int], max_new_tokens: int, num_beams: int = 1) -> str:
    out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=num_beams)
    return tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)


@pytest.mark.parametrize("name", sorted(PROMPTS))
def test_greedy_matches_hf_generate(model, tokenizer, name: str) -> None:
    ids = ids_of(tokenizer, name)
    text = generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=30))
    assert len(text) > 10 and text == hf_greedy(model, tokenizer, ids, 30)


def test_greedy_matches_hf_generate_with_lora(model, tokenizer) -> None:
    from peft import LoraConfig, PeftModel, get_peft_model

    torch.manual_seed(1)
    config = LoraConfig(task_type="CAUSAL_LM", r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False)
    peft_model = get_peft_model(copy.deepcopy(model), config)
    assert isinstance(peft_model, PeftModel)
    ids, settings = ids_of(tokenizer, "chat"), GenerationSettings(max_new_tokens=30)
    text = generate_text(peft_model, tokenizer, ids, settings)
    assert text == hf_greedy(peft_model, tokenizer, ids, 30)
    assert text != generate_text(model, tokenizer, ids, settings)  # the adapter is in use


def test_beam_search_matches_hf_beam_search(model, tokenizer) -> None:
    differs = False
    for name in sorted(PROMPTS):
        ids = ids_of(tokenizer, name)
        settings = GenerationSettings(max_new_tokens=30, num_beams=4)
        text = "".join(stream(model, tokenizer, ids, settings))
        assert len(text) > 10 and text == hf_greedy(model, tokenizer, ids, 30, num_beams=4)
        differs |= text != generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=30))
    assert differs  # the search is not greedy decoding under another name
    ids = ids_of(tokenizer, "en")
    text = generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=30, num_beams=4))
    stop = text[len(text) // 2:len(text) // 2 + 3]
    assert generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=30, num_beams=4, stop=[stop])) == \
        text[:text.find(stop)]


@pytest.mark.parametrize("settings", [GenerationSettings(max_new_tokens=40),
                                      GenerationSettings(max_new_tokens=40, temperature=1.0, seed=3)])
def test_pieces_join_to_generate_text(model, tokenizer, settings: GenerationSettings) -> None:
    ids = ids_of(tokenizer, "zh")
    pieces = list(stream(model, tokenizer, ids, settings))
    assert len(pieces) > 1 and all(pieces)
    assert "".join(pieces) == generate_text(model, tokenizer, ids, settings)


def test_chinese_pieces_are_whole_characters(model, tokenizer) -> None:
    script = tokenizer(ZH_REPLY, add_special_tokens=False)["input_ids"]
    assert any(tokenizer.decode(script[:k]).endswith("\ufffd") for k in range(len(script)))  # characters split
    pieces = list(stream(Scripted(model, script), tokenizer, ids_of(tokenizer, "zh"), GenerationSettings()))
    assert "".join(pieces) == ZH_REPLY and len(pieces) > 5
    assert not any("\ufffd" in piece for piece in pieces)
    # A stop sequence over several tokens, one of them a byte of 👍; the text before the stop is all there.
    for stop, reply in [("很快 👍", "是的，物流"), ("👍 吗", "是的，物流很快 "), ("物流很慢", ZH_REPLY)]:
        settings = GenerationSettings(stop=[stop])
        assert generate_text(Scripted(model, script), tokenizer, ids_of(tokenizer, "zh"), settings) == reply


def test_incomplete_character_at_the_end_is_flushed(model, tokenizer) -> None:
    script = tokenizer("很快 👍", add_special_tokens=False)["input_ids"][:-1]
    expected = tokenizer.decode(script, skip_special_tokens=True)
    assert expected.endswith("\ufffd")
    assert generate_text(Scripted(model, script), tokenizer, ids_of(tokenizer, "zh"), GenerationSettings()) == expected


def test_stop_sequence_cuts_the_reply(model, tokenizer) -> None:
    ids = ids_of(tokenizer, "en")
    text = generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=40))
    middle = len(text) // 2
    stop = text[middle:middle + 4]
    cut = text[:text.find(stop)]
    assert len(cut) > 5 and len(stop) == 4
    assert generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=40, stop=[stop])) == cut
    # The earliest of several stops wins; a stop whose start shows up but never completes is released at the end.
    assert generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=40, stop=[text[-3:], stop])) == cut
    unmatched = GenerationSettings(max_new_tokens=40, stop=[stop[:2] + "\0", text[-1] + "\0"])
    assert generate_text(model, tokenizer, ids, unmatched) == text


def test_max_new_tokens_eos_and_context_window(model, tokenizer) -> None:
    script = tokenizer("the blender broke after a week", add_special_tokens=False)["input_ids"]
    assert len(script) > 8
    ids = ids_of(tokenizer, "en")
    text = generate_text(Scripted(model, script), tokenizer, ids, GenerationSettings(max_new_tokens=6))
    assert text == tokenizer.decode(script[:6])
    eos_inside = Scripted(model, script[:4] + [EOS] + script[4:])
    assert generate_text(eos_inside, tokenizer, ids, GenerationSettings()) == tokenizer.decode(script[:4])
    also_eos = Scripted(model, script)
    also_eos.generation_config.eos_token_id = [EOS, script[3]]
    assert generate_text(also_eos, tokenizer, ids, GenerationSettings()) == tokenizer.decode(script[:3])
    window = model.config.max_position_embeddings
    long_prompt = [5] * (window - 4)  # room for 4 new tokens only
    text = generate_text(Scripted(model, script), tokenizer, long_prompt, GenerationSettings(max_new_tokens=100))
    assert text == tokenizer.decode(script[:4])
    with pytest.raises(ValueError, match=f"{window} tokens but .* holds {window}"):
        stream(model, tokenizer, [5] * window, GenerationSettings())  # raises at the call, before iteration


def test_sampling_is_seeded_and_top_p_tiny_is_greedy(model, tokenizer) -> None:
    ids = ids_of(tokenizer, "en")
    greedy = generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=20))
    samples = [generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=20, temperature=1.0, seed=s))
               for s in range(3)]
    again = generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=20, temperature=1.0, seed=0))
    assert again == samples[0]
    assert len(set(samples)) > 1 and any(sample != greedy for sample in samples)
    tiny_p = GenerationSettings(max_new_tokens=20, temperature=1.5, top_p=1e-6, seed=1)
    assert generate_text(model, tokenizer, ids, tiny_p) == greedy


def test_one_forward_per_token_in_eval_mode_restored_after(model, tokenizer) -> None:
    seen: list[tuple[int, bool, bool]] = []
    hook = model.register_forward_hook(
        lambda module, args, kwargs, out: seen.append(
            (kwargs["input_ids"].shape[1], module.training, torch.is_inference_mode_enabled())),
        with_kwargs=True)
    ids = ids_of(tokenizer, "en")
    model.train()
    try:
        pieces = stream(model, tokenizer, ids, GenerationSettings(max_new_tokens=20))
        next(pieces)
        assert not torch.is_inference_mode_enabled() and torch.is_grad_enabled()  # nothing leaks into the caller
        assert not model.training and not model.model.layers[0].training
        pieces.close()  # stopping early restores the mode too
        assert model.training and model.model.layers[0].training
        seen.clear()
        generate_text(model, tokenizer, ids, GenerationSettings(max_new_tokens=20))
        assert model.training and seen[0] == (len(ids), False, True)
        assert len(seen) > 10 and all(state == (1, False, True) for state in seen[1:])
    finally:
        hook.remove()
        model.eval()


def test_settings_are_checked() -> None:
    for bad in [{"max_new_tokens": 0}, {"temperature": -0.1}, {"top_p": 0.0}, {"top_p": 1.5}, {"num_beams": 0},
                {"num_beams": 2, "temperature": 0.7}]:
        with pytest.raises(ValueError, match=next(reversed(bad))):
            GenerationSettings(**bad)


def render(tokenizer, messages: list[dict[str, str]]) -> list[int]:
    text = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def test_prompt_ids_drops_oldest_turns_first(tokenizer) -> None:
    full = render(tokenizer, CHAT)
    assert prompt_ids(tokenizer, CHAT, len(full)) == full
    one_turn_less = render(tokenizer, [SYSTEM] + CHAT[3:])
    assert prompt_ids(tokenizer, CHAT, len(full) - 1) == one_turn_less
    minimal = render(tokenizer, [SYSTEM, CHAT[-1]])
    assert prompt_ids(tokenizer, CHAT, len(one_turn_less) - 1) == minimal
    assert prompt_ids(tokenizer, CHAT, len(minimal)) == minimal
    with pytest.raises(ValueError, match=f"{len(minimal)} tokens, more than max_prompt_tokens={len(minimal) - 1}"):
        prompt_ids(tokenizer, CHAT, len(minimal) - 1)
    # A leading greeting is a turn of its own; with no system message the template's default one stays.
    greeting = [{"role": "assistant", "content": "Hi! How can I help?"}] + CHAT[1:]
    assert prompt_ids(tokenizer, greeting, len(render(tokenizer, greeting)) - 1) == render(tokenizer, CHAT[1:])
    with pytest.raises(ValueError, match="no user message"):
        prompt_ids(tokenizer, [SYSTEM], 100)
