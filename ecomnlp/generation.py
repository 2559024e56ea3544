"""Text generation for a causal-LM chatbot: a KV-cached decoding loop that streams the reply as text.

Works for a plain ``*ForCausalLM`` and for a ``peft.PeftModel`` around one. Decoding is greedy at temperature 0,
otherwise temperature + nucleus (top-p) sampling, or a beam search (``num_beams`` > 1, deterministic; its reply
streams only when the search ends, since no token is final before); it stops at an eos token, at ``max_new_tokens``,
when the context window is full, or at a stop sequence (which is not part of the reply).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterator

import torch

from .config import GenerationSettings

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

INCOMPLETE = "\ufffd"  # what decoding shows for the bytes of a character that is not complete yet


def stream(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: list[int],
           settings: GenerationSettings) -> Iterator[str]:
    """Yield the reply as text pieces, as soon as each is final.

    Raises ValueError (at once, not on iteration) for an empty prompt or one that fills the context window.
    """
    window = model.config.get_text_config().max_position_embeddings
    if not input_ids:
        raise ValueError("input_ids is empty")
    if len(input_ids) >= window:
        raise ValueError(f"the prompt has {len(input_ids)} tokens but the model's context window holds {window}, "
                         "leaving no room for a reply")
    limit = min(settings.max_new_tokens, window - len(input_ids))
    return _stream(model, tokenizer, input_ids, settings, limit)


def generate_text(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: list[int],
                  settings: GenerationSettings) -> str:
    """The whole reply: ``"".join(stream(...))``."""
    return "".join(stream(model, tokenizer, input_ids, settings))


def prompt_ids(tokenizer: PreTrainedTokenizerBase, messages: list[dict[str, str]], max_prompt_tokens: int) -> list[int]:
    """Token ids of the chat template with ``add_generation_prompt=True``, trimmed to fit ``max_prompt_tokens``.

    Drops the oldest turns first (a user message with the assistant replies after it); never the system
    message(s) or the last user message. Raises ValueError naming the sizes if even those do not fit.
    """
    users = [i for i, message in enumerate(messages) if message["role"] == "user"]
    if not users:
        raise ValueError("messages have no user message")
    turns: list[list[int]] = []  # indices of the droppable messages, oldest turn first
    for i, message in enumerate(messages[: users[-1]]):
        if message["role"] == "system":
            continue
        if message["role"] == "user" or not turns:
            turns.append([])
        turns[-1].append(i)
    dropped: set[int] = set()
    while True:
        kept = [message for i, message in enumerate(messages) if i not in dropped]
        text = tokenizer.apply_chat_template(kept, add_generation_prompt=True, tokenize=False)
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) <= max_prompt_tokens:
            return ids
        if not turns:
            raise ValueError(f"the prompt with only the system message(s) and the last user message has {len(ids)} "
                             f"tokens, more than max_prompt_tokens={max_prompt_tokens}")
        dropped.update(turns.pop(0))


def _stream(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase, input_ids: list[int],
            settings: GenerationSettings, limit: int) -> Iterator[str]:
    """The pieces of the reply of at most ``limit`` tokens, with the model in eval mode meanwhile."""
    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        stops = [s for s in settings.stop if s]
        generated: list[int] = []
        text, emitted = "", 0
        tokens = _beam_tokens if settings.num_beams > 1 else _tokens
        for token in tokens(model, input_ids, settings, _eos_ids(model, tokenizer), limit):
            generated.append(token)
            text = tokenizer.decode(generated, skip_special_tokens=True)
            if text.endswith(INCOMPLETE):
                continue
            if _stop_index(text, stops) is not None:
                break
            end = len(text) - _pending(text, stops)
            if end > emitted:
                yield text[emitted:end]
                emitted = end
        rest = text[emitted:_stop_index(text, stops)]
        if rest:
            yield rest
    finally:
        for module, training in modes.items():
            module.training = training


def _tokens(model: torch.nn.Module, input_ids: list[int], settings: GenerationSettings, eos_ids: set[int],
            limit: int) -> Iterator[int]:
    """Up to ``limit`` new token ids, ending before an eos: one forward over the prompt, then one per token
    on the KV cache. Inference mode is on for each forward only, never while the caller holds a token."""
    device = next(model.parameters()).device
    generator = torch.Generator()  # on the CPU, so a seed samples the same on any device
    if settings.seed is None:
        generator.seed()
    else:
        generator.manual_seed(settings.seed)
    core = _core(model)
    step_input = torch.tensor([input_ids], device=device)
    cache = None  # the KV cache (``cache``, formerly ``past_key_values``, in transformers 5)
    for _ in range(limit):
        with torch.inference_mode():
            out = core(input_ids=step_input, cache=cache, use_cache=True, logits_to_keep=1)
            token = _next_token(out.logits[0, -1], settings, generator)
        if token in eos_ids:
            return
        yield token
        cache = out.cache
        step_input = torch.tensor([[token]], device=device)


def _beam_tokens(model: torch.nn.Module, input_ids: list[int], settings: GenerationSettings, eos_ids: set[int],
                 limit: int) -> Iterator[int]:
    """The best beam's new token ids (up to ``limit``, ending before an eos), by transformers' beam search."""
    device = next(model.parameters()).device
    prompt = torch.tensor([input_ids], device=device)
    with torch.inference_mode():
        out = _core(model).generate(input_ids=prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=limit,
                                    num_beams=settings.num_beams, do_sample=False, use_cache=True,
                                    eos_token_id=sorted(eos_ids) or None, pad_token_id=min(eos_ids, default=None))
    for token in out[0, len(input_ids):].tolist():
        if token in eos_ids:
            return
        yield token


def _core(model: torch.nn.Module) -> torch.nn.Module:
    """The model to call: a peft model's LoRA layers sit inside its base model, so calling that directly skips
    PeftModel.forward's per-call work, and disable_adapter() still holds."""
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def _next_token(logits: torch.Tensor, settings: GenerationSettings, generator: torch.Generator) -> int:
    """Greedy at temperature 0, else a draw from the smallest set of top tokens whose probability reaches top_p."""
    if settings.temperature == 0:
        return int(logits.argmax())
    probs = torch.softmax(logits.float().cpu() / settings.temperature, dim=-1)
    sorted_probs, order = probs.sort(descending=True, stable=True)
    nucleus = sorted_probs.cumsum(0) - sorted_probs < settings.top_p  # the most likely token is always in
    choice = torch.multinomial(sorted_probs * nucleus, 1, generator=generator)
    return int(order[choice])


def _eos_ids(model: torch.nn.Module, tokenizer: PreTrainedTokenizerBase) -> set[int]:
    """The tokenizer's eos id and those of the model's generation config."""
    configured = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    extra = [] if configured is None else [configured] if isinstance(configured, int) else list(configured)
    return {i for i in [tokenizer.eos_token_id, *extra] if i is not None}


def _stop_index(text: str, stops: list[str]) -> int | None:
    """Where the first stop sequence in ``text`` starts, or None."""
    return min((i for s in stops if (i := text.find(s)) >= 0), default=None)


def _pending(text: str, stops: list[str]) -> int:
    """Length of the longest end of ``text`` that starts a stop sequence: text to hold back for now."""
    return max((k for s in stops for k in range(1, min(len(s), len(text) + 1)) if text.endswith(s[:k])), default=0)
