"""The support chatbot end to end on tiny models: grounded SFT examples, train → save → load → same
reply (as the card says to decode), hand-off below the threshold, streaming, PII-masked logs and the CLI commands."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch

from conftest import support_files, train_tiny_chat


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return support_files(tmp_path_factory.mktemp("support"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory, tiny_lm: Path, tiny_encoder: Path,
            files: dict[str, Path]) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("runs") / "support"
    return out, train_tiny_chat(out, tiny_lm, tiny_encoder, files)


def test_each_reply_is_one_example_with_loss_on_it_only(tiny_lm: Path, tiny_encoder: Path, files: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    from ecomnlp.backbone import Backbone
    from ecomnlp.chat_data import IGNORE_INDEX, load_dialogues
    from ecomnlp.chat_training import build_split, support_task
    from ecomnlp.knowledge import KnowledgeBase, Retriever

    tokenizer = AutoTokenizer.from_pretrained(tiny_lm)
    kb = KnowledgeBase.load(files["kb"])
    retriever = Retriever(kb, str(tiny_encoder), backbone=Backbone(tiny_encoder))
    dialogues = load_dialogues(files["train"])[:4]
    split = build_split(dialogues, retriever, support_task("Test Shop"), tokenizer, k=2, max_length=1024)
    assert len(split.ids) == 5  # the two-turn dialogue gives two examples
    replies = ["Yes, within 30 days.", "Orders ship in 2 days.", "It reaches your card in 5 days.",
               "Within 30 days.", "支持7天无理由退货。"]
    for ids, labels, reply in zip(split.ids, split.targets, replies):
        learned = [t for t, y in zip(ids, labels) if y != IGNORE_INDEX]
        assert tokenizer.decode(learned) == reply + tokenizer.eos_token
        text = tokenizer.decode(ids)
        assert "Test Shop" in text and text.count("[") >= 2  # the system prompt carries two passages
    # the right entry is always among the passages, even where the (random) encoder missed it
    gold = tokenizer.decode(split.ids[4])
    assert "[tuihuo] 退货: 7天无理由退货。" in gold
    # a budget too small for the whole history drops the first exchange, keeps the second
    long = build_split(dialogues[2:3], retriever, support_task("Test Shop"), tokenizer, k=2,
                       max_length=len(split.ids[3]) - 1)
    assert "where is my refund" not in tokenizer.decode(long.ids[1]) and "and returns?" in tokenizer.decode(long.ids[1])


def test_train_save_load_gives_the_same_reply(trained: tuple[Path, dict], tiny_lm: Path) -> None:
    import ecomnlp
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from ecomnlp.chatbot import SupportBot

    out, summary = trained
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "card.json", "kb.jsonl", "retrieval"]
    assert {"adapter_config.json", "adapter_model.safetensors"} <= {p.name for p in (out / "retrieval").iterdir()}
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    assert card["task"] == "support_chat" and card["kind"] == "chat" and card["retrieval"]["top_k"] == 2
    threshold = card["retrieval"]["threshold"]
    assert isinstance(threshold, float) and summary["retrieval"]["out_of_kb_questions"] == 2
    ppl = summary["perplexity"]
    assert ppl["after"] < ppl["before"]  # 2 epochs at a high learning rate fit the replies
    bot = ecomnlp.load(out)
    assert isinstance(bot, SupportBot)
    # the training dialogues' questions were saved with the entries that answered them, for retrieval
    assert {(q, e.id) for e in bot.retriever.kb for q in e.questions} == {
        ("can I return a lamp?", "returns"), ("when does my order ship?", "shipping"), ("where is my refund?", "refunds"),
        ("and returns?", "returns"), ("可以退货吗", "tuihuo")}
    assert bot.retriever.question_vectors.shape[0] == 5
    assert card["generation"]["num_beams"] == bot.settings.num_beams == 2  # decoded as trained to: 2 beams
    example = card["example"]
    assert example["content"] and not example["handoff"]  # a generated reply, not the fixed hand-off text
    reply = bot.chat([{"role": "user", "content": example["question"]}])
    assert reply == {k: example[k] for k in ("role", "content", "sources", "handoff", "score")}
    # the adapter is plain peft: it loads onto the base without ecomnlp
    PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_lm), str(out))


def test_handoff_below_threshold_and_streaming(trained: tuple[Path, dict]) -> None:
    import ecomnlp

    bot = ecomnlp.load(trained[0])
    messages = [{"role": "user", "content": "can I return a lamp?"}]
    score = bot.ground(messages).hits[0].score
    bot.threshold = score + 1e-3
    handed = bot.chat(messages)
    assert handed["handoff"] and handed["sources"] == [] and "human" in handed["content"]
    assert "人工" in bot.task.handoff("可以退货吗")  # the hand-off speaks the customer's language
    bot.threshold = score - 1e-3
    for beams in (1, 2):  # greedy, and the card's beam search
        answered = bot.chat(messages, max_new_tokens=12, num_beams=beams)
        assert not answered["handoff"] and len(answered["sources"]) == 2
        assert "".join(bot.stream(messages, max_new_tokens=12, num_beams=beams)).strip() == answered["content"]
    bot.use_retrieval = False  # the baseline: no passages at all
    assert bot.chat(messages, max_new_tokens=4)["sources"] == []


def test_the_lm_reranks_with_its_base_weights(trained: tuple[Path, dict]) -> None:
    import ecomnlp
    from ecomnlp.rerank import question_log_likelihood

    out, summary = trained
    card = json.loads((out / "card.json").read_text(encoding="utf-8"))
    bot = ecomnlp.load(out)
    assert (bot.rerank_depth, bot.rerank_weight) == (3, card["retrieval"]["rerank_weight"])
    assert {"recall@1_before_rerank", "recall@1", "recall@2"} <= set(summary["retrieval"])
    question = "can I return a lamp?"
    hits = bot.retriever.search(question, 3)
    with bot.model.disable_adapter():
        likelihood = question_log_likelihood(bot.model, bot.tokenizer, [h.entry for h in hits], question)
    bot.rerank_weight, bot.threshold = 1e6, None  # the LM's likelihood alone decides
    assert bot.ground([{"role": "user", "content": question}]).sources == [
        hits[i].entry.id for i in sorted(range(3), key=lambda i: -likelihood[i])][:2]


def test_customer_text_is_logged_with_pii_masked(trained: tuple[Path, dict], caplog: pytest.LogCaptureFixture) -> None:
    import ecomnlp
    from ecomnlp.pii import mask_pii

    bot = ecomnlp.load(trained[0])
    with caplog.at_level(logging.INFO, logger="ecomnlp.chatbot"):
        bot.chat([{"role": "user", "content": "order #A12345678 never came, mail me at jo@example.com"}],
                 max_new_tokens=2)
    logged = caplog.text
    assert "A12345678" not in logged and "jo@example.com" not in logged
    assert "[ORDER]" in logged and "[EMAIL]" in logged
    # the reply is logged once, whether it is asked for whole or streamed (as `ecomnlp serve` streams it)
    for ask in (lambda m: bot.chat(m, max_new_tokens=2)["content"],
                lambda m: "".join(bot.stream(m, max_new_tokens=2)).strip()):
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ecomnlp.chatbot"):
            reply = ask([{"role": "user", "content": "can I return a lamp?"}])
        assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("assistant: ")] == \
            [f"assistant: {mask_pii(reply)}"]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ecomnlp.chatbot"):
        pieces = bot.stream([{"role": "user", "content": "can I return a lamp?"}], max_new_tokens=8, num_beams=1)
        first = next(pieces)
        pieces.close()  # a reader that stops early (a client gone): what was said is logged
    assert [r.getMessage() for r in caplog.records if r.getMessage().startswith("assistant: ")] == \
        [f"assistant: {mask_pii(first.strip())}"]


def test_cli_chat_repl_streams_and_logs_masked(trained: tuple[Path, dict], tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    from ecomnlp.cli import main

    lines = iter(["call me on 555-123-4567 about my return", ""])
    monkeypatch.setattr("builtins.input", lambda _: next(lines))
    log = tmp_path / "transcript.jsonl"
    main(["chat", "--model", str(trained[0]), "--max_new_tokens", "3", "--log", str(log)])
    assert "bot> " in capsys.readouterr().out
    records = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [r["role"] for r in records] == ["user", "assistant"]
    assert records[0]["content"] == "call me on [PHONE] about my return"


def test_replacement_kb_keeps_the_learned_questions_of_its_entries(trained: tuple[Path, dict],
                                                                    tmp_path: Path) -> None:
    from conftest import write_jsonl

    from ecomnlp.chat_training import KB_FILE
    from ecomnlp.chatbot import load_chatbot
    from ecomnlp.knowledge import KnowledgeBase

    out = trained[0]
    saved = KnowledgeBase.load(out / KB_FILE)
    assert saved["returns"].questions  # learned from the training dialogues
    edited = [{"id": e.id, "title": e.title, "text": e.text + " (updated)"} for e in saved if e.id != "shipping"]
    bot = load_chatbot(out, kb=write_jsonl(tmp_path / "new_kb.jsonl", edited))
    kb = bot.retriever.kb
    assert kb.ids == [e["id"] for e in edited] and kb["returns"].text.endswith("(updated)")
    assert {e.id: e.questions for e in kb} == {e.id: e.questions for e in saved if e.id != "shipping"}


def test_train_chat_config_loads() -> None:
    from ecomnlp.cli import command_arguments, train_chat_command

    args = command_arguments(train_chat_command, str(Path(__file__).resolve().parents[1] / "configs/support_chat.yaml"))
    assert args["model"] == "smollm2-135m-instruct" and args["data"].top_k == 3
    assert "gate_proj" in args["lora"].target_modules


def test_retrieval_adapter_learns_the_questions(tiny_encoder: Path, files: dict[str, Path], tmp_path: Path) -> None:
    from ecomnlp.backbone import Backbone
    from ecomnlp.chat_data import load_dialogues
    from ecomnlp.chat_training import question_pairs
    from ecomnlp.config import RetrievalSettings, TrainerSettings
    from ecomnlp.knowledge import KnowledgeBase, Retriever
    from ecomnlp.retrieval_training import ADAPTER, recall, train_retrieval_adapter

    kb = KnowledgeBase.load(files["kb"])
    base = Retriever(kb, str(tiny_encoder), backbone=Backbone(tiny_encoder), cache=tmp_path / "cache")
    pairs = question_pairs(load_dialogues(files["train"]))
    assert len(pairs) == 15 and ("and returns?", "returns") in pairs
    settings = RetrievalSettings(epochs=15, lr=2e-2, batch_size=8, patience=20)
    trainer = TrainerSettings(progress_bar=False, accelerator="cpu", devices=1, log_every_n_steps=1)
    report = train_retrieval_adapter(base, pairs, pairs, settings, 1, trainer, tmp_path / "work")
    tuned = Retriever(kb, str(tiny_encoder), backbone=base.backbone, adapter=ADAPTER, cache=tmp_path / "cache")
    assert tuned.cache_path == base.cache_path and tuned.from_cache  # passages: base vectors, cached once
    assert recall(tuned, pairs, 1) == 1.0
    assert recall(base, pairs, 1) == report["recall_before"]  # the base alone is unchanged

    def margin(retriever: Retriever) -> float:
        """Mean of (score of the question's entry - best score of another entry): > 0 ranks it first."""
        scores = retriever.scores(retriever._embed([retriever.query_prefix + q for q, _ in pairs], retriever.adapter))
        ids = [e.id for e in retriever.entries]
        right = torch.tensor([ids.index(entry) for _, entry in pairs])
        own = scores[torch.arange(len(pairs)), right]
        others = scores.scatter(1, right[:, None], -math.inf).max(dim=1).values
        return float((own - others).mean())

    assert margin(tuned) > margin(base)  # training moved the questions towards their entries
