"""Chat rendering and loss masks on the tiny causal LM, the JSONL conversation loader, and the tiny LM itself."""
from __future__ import annotations

import json
from itertools import groupby
from pathlib import Path

import pytest
import torch

from ecomnlp.chat_data import IGNORE_INDEX, load_conversations, render
from ecomnlp.data import DataError
from ecomnlp.models.tiny import CHATML_TEMPLATE, make_tiny_causal_lm

SINGLE = [{"role": "user", "content": "the blender broke after a week"},
          {"role": "assistant", "content": "Sorry to hear that! We will send a refund."}]
MULTI = [{"role": "system", "content": "You answer questions about orders."},
         {"role": "user", "content": "Where is my tea?"},
         {"role": "assistant", "content": "It ships today."},
         {"role": "user", "content": "And the shampoo?"},
         {"role": "assistant", "content": "Tomorrow, with fast shipping."}]
CHINESE = [{"role": "user", "content": "手机电池很耐用吗？"},
           {"role": "assistant", "content": "是的，物流很快 👍"},
           {"role": "user", "content": "酒店早餐很难吃"},
           {"role": "assistant", "content": "抱歉，我们会退款。\n第二行"}]
# Assistant text that also appears earlier (as user text, in the system prompt, in a header), a greeting first.
TRICKY = [{"role": "assistant", "content": "assistant"},
          {"role": "user", "content": "ok"},
          {"role": "assistant", "content": "ok"},
          {"role": "user", "content": "Hugging Face"},
          {"role": "assistant", "content": " Hugging Face "}]
CONVERSATIONS = {"single": SINGLE, "multi": MULTI, "chinese": CHINESE, "tricky": TRICKY}


@pytest.fixture(scope="module")
def tiny_lm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_causal_lm(tmp_path_factory.mktemp("tiny_lm") / "model")


@pytest.fixture(scope="module")
def tokenizer(tiny_lm: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_lm)


def test_tiny_causal_lm_loads_and_generates(tiny_lm: Path, tokenizer) -> None:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_lm)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 32
    assert tokenizer.chat_template == CHATML_TEMPLATE
    assert [tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token] == ["<|im_start|>"] + ["<|im_end|>"] * 2
    assert tokenizer.convert_tokens_to_ids(["<|im_start|>", "<|im_end|>"]) == [1, 2]
    assert model.generation_config.eos_token_id == 2 and model.generation_config.pad_token_id == 2
    text = "手机电池很耐用 — new words like Zürich ✓"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text  # byte-level: nothing is unknown
    prompt = tokenizer.apply_chat_template(CHINESE[:1], add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert out.shape[0] == 1 and prompt["input_ids"].shape[1] < out.shape[1] <= prompt["input_ids"].shape[1] + 4
    assert torch.equal(out[:, : prompt["input_ids"].shape[1]], prompt["input_ids"])


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_render_matches_chat_template(tokenizer, name: str) -> None:
    messages = CONVERSATIONS[name]
    ids, labels = render(tokenizer, messages)
    assert ids == tokenizer.apply_chat_template(messages)["input_ids"]
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(messages, tokenize=False)
    assert len(labels) == len(ids)


@pytest.mark.parametrize("name", CONVERSATIONS)
def test_labels_cover_exactly_the_assistant_replies(tokenizer, name: str) -> None:
    messages = CONVERSATIONS[name]
    ids, labels = render(tokenizer, messages)
    assert all(label in (token, IGNORE_INDEX) for token, label in zip(ids, labels))
    runs = [[label for _, label in run] for kept, run in groupby(enumerate(labels), lambda x: x[1] != IGNORE_INDEX)
            if kept]
    replies = [m["content"] + "<|im_end|>" for m in messages if m["role"] == "assistant"]
    assert [tokenizer.decode(run) for run in runs] == replies
    assert tokenizer.decode(ids[-1:]) == "\n" and labels[-1] == IGNORE_INDEX  # after the last <|im_end|>


def write_lines(path: Path, lines: list[object]) -> Path:
    path.write_text("".join(x if isinstance(x, str) else json.dumps(x, ensure_ascii=False) + "\n" for x in lines),
                    encoding="utf-8")
    return path


def test_load_conversations(tmp_path: Path) -> None:
    path = write_lines(tmp_path / "chats.jsonl", [{"messages": SINGLE, "id": 7}, "\n",
                                                 {"messages": [dict(m, name="x") for m in CHINESE]}])
    assert load_conversations(path) == [SINGLE, CHINESE]


GOOD = {"messages": SINGLE}


@pytest.mark.parametrize("bad, expected", [
    ('{"messages": [}\n', "invalid JSON"),
    ({"turns": SINGLE}, "missing field 'messages'"),
    (["not", "an", "object"], "missing field 'messages'"),
    ({"messages": []}, "field 'messages' must be a non-empty list"),
    ({"messages": [SINGLE[0], "hello"]}, "field 'messages[1]' must be an object"),
    ({"messages": [{"role": "bot", "content": "hi"}, SINGLE[1]]}, "field 'messages[0].role': unknown role 'bot'"),
    ({"messages": [{"content": "hi"}, SINGLE[1]]}, "field 'messages[0].role': unknown role None"),
    ({"messages": [SINGLE[0], {"role": "assistant", "content": " "}]}, "field 'messages[1].content' must be"),
    ({"messages": [SINGLE[0], {"role": "assistant"}]}, "field 'messages[1].content' must be a non-empty string"),
    ({"messages": [{"role": "system", "content": "be kind"}, SINGLE[0]]}, "field 'messages' has no assistant turn"),
])
def test_load_conversations_errors_name_file_line_and_field(tmp_path: Path, bad: object, expected: str) -> None:
    path = write_lines(tmp_path / "chats.jsonl", [GOOD, bad, GOOD])
    with pytest.raises(DataError) as info:
        load_conversations(path)
    assert str(info.value).startswith(f"{path}, line 2: ")
    assert expected in str(info.value)


def test_load_conversations_empty_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no conversations"):
        load_conversations(write_lines(tmp_path / "empty.jsonl", ["\n"]))
