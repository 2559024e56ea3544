"""Support chatbot benchmark, one run: train the LoRA adapter (configs/support_chat.yaml), then on the
held-out test questions of the demo store (paraphrases that are not in training, and questions the
knowledge base does not answer) measure

  - retrieval recall@k: the shared encoder's top k, re-ranked by the LM where the config says so;
  - how often the reply states the right entry's key fact (automatic match on the entry's `key`),
    for ours (LoRA + retrieval), the same base with retrieval but no LoRA, and the same base with
    neither (side by side), all decoded as the config's `generation` says; for ours also by the rank
    retrieval gave the right entry, and on the validation questions (the ones to choose settings by),
    there with greedy decoding too where the config asks for beam search;
  - how often out-of-KB questions are handed off to a human (threshold chosen on validation);
  - perplexity on held-out dialogues before and after LoRA;
  - CPU generation speed: tokens/s of `bot.stream` against plain `model.generate` with KV cache on the
    same prompt, both greedy, and time to first token; the mean time per reply as decoded.

Writes reports/bench_chat.json and the README table (between the bench_chat markers).

    python scripts/bench_chat.py [--data-dir ecomnlp/demo_data/support] [--max-new-tokens 96]

Other arguments override configs/support_chat.yaml (e.g. --trainer.lr=1e-4).
Smoke run: --model <tiny LM> --encoder <tiny encoder> --data-dir <tiny copy> --max-steps 2 --lora.layers=null.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

from ecomnlp.chatbot import EVAL_REPLY_TOKENS, bot_recall, key_fact_replies
from _bench import ROOT, publish

CONFIG = "configs/support_chat.yaml"
GOALS = {"recall": 0.95, "key_fact": 0.85, "handoff": 0.90}


def answer_all(bot: Any, questions: list[Any], adapter: bool, retrieval: bool, max_new_tokens: int) -> dict[str, Any]:
    """Replies to the answerable questions with the adapter and/or retrieval switched on or off."""
    bot.use_adapter, bot.use_retrieval = adapter, retrieval
    started = time.perf_counter()
    try:
        replies = key_fact_replies(bot, questions, max_new_tokens)
    finally:
        bot.use_adapter, bot.use_retrieval = True, True
    return {"key_fact_rate": sum(r["states_key"] for r in replies) / len(replies), "questions": len(replies),
            "wall_time_s": round(time.perf_counter() - started, 1), "replies": replies}


def speed(bot: Any, question: str, max_new_tokens: int, repeats: int) -> dict[str, Any]:
    """Median tokens/s of ``bot.stream`` and of ``model.generate`` (KV cache, greedy) on the same prompt.

    Both decode the same greedy reply (checked), so both rates divide the same token count, ending eos
    included (each made a forward pass for it), by their own wall time.
    """
    import torch

    messages = [{"role": "user", "content": question}]
    grounding = bot.ground(messages)
    grounding.handoff = False
    ids = bot.prompt(messages, grounding, max_new_tokens)
    ours, plain, first, retrieval = [], [], [], []
    for _ in range(repeats):
        started = time.perf_counter()
        bot.ground(messages)
        retrieval.append(time.perf_counter() - started)
        started = time.perf_counter()
        with torch.inference_mode():
            out = bot.model.generate(input_ids=torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                                     max_new_tokens=max_new_tokens, do_sample=False, use_cache=True)
        plain_time = time.perf_counter() - started
        started = time.perf_counter()
        pieces = []
        for piece in bot.stream(messages, grounding, max_new_tokens=max_new_tokens, num_beams=1):
            if not pieces:
                first.append(time.perf_counter() - started)
            pieces.append(piece)
        ours_time = time.perf_counter() - started
        reply = bot.tokenizer.decode(out[0, len(ids):], skip_special_tokens=True)
        if reply.strip() != "".join(pieces).strip():
            raise RuntimeError(f"stream and generate disagree: {''.join(pieces)!r} vs {reply!r}")
        tokens = out.shape[1] - len(ids)
        ours.append(tokens / ours_time)
        plain.append(tokens / plain_time)
    return {"prompt_tokens": len(ids), "new_tokens": tokens, "repeats": repeats,
            "stream_tokens_per_s": statistics.median(ours), "generate_tokens_per_s": statistics.median(plain),
            "time_to_first_token_s": statistics.median(first), "retrieval_s": statistics.median(retrieval)}


def recall_at(bot: Any, answerable: list[Any], cutoffs: list[int]) -> dict[str, dict[str, float]]:
    """Recall@k for each k in ``cutoffs``, of the encoder's order and of the passages the bot is given (re-ranked
    where it re-ranks): ``{"recall@<k>": {"encoder": ..., "bot": ...}}``."""
    weight = bot.rerank_weight
    try:
        bot.rerank_weight = 0.0
        before = bot_recall(bot, answerable, cutoffs)
    finally:
        bot.rerank_weight = weight
    after = bot_recall(bot, answerable, cutoffs)
    return {f"recall@{k}": {"encoder": before[k], "bot": after[k]} for k in cutoffs}


def by_rank(replies: list[dict[str, Any]]) -> str:
    """The key-fact rate of ``replies`` by where retrieval ranked the question's entry, e.g. "first 55/96"."""
    groups: dict[str, list[bool]] = {"first": [], "second or later": [], "not retrieved": []}
    for reply in replies:
        rank = reply["sources"].index(reply["kb"]) if reply["kb"] in reply["sources"] else None
        name = "not retrieved" if rank is None else "first" if rank == 0 else "second or later"
        groups[name].append(reply["states_key"])
    return ", ".join(f"{name} {sum(g)}/{len(g)}" for name, g in groups.items() if g)


def rerank_line(r: dict[str, Any]) -> str:
    rerank, first, top = r["rerank"], r["rerank"]["recall@1"], r["rerank"][f"recall@{r['top_k']}"]
    if not (rerank["depth"] and rerank["weight"]):
        return f"Passages in the encoder's order (no re-ranking): recall@1 {first['encoder']:.1%}."
    return (f"The LM re-ranks the encoder's top {rerank['depth']} (weight {rerank['weight']}, chosen on the validation "
            f"questions): recall@1 {first['encoder']:.1%} before, {first['bot']:.1%} after; recall@{r['top_k']} "
            f"{top['encoder']:.1%} before, {top['bot']:.1%} after (the table's).")


def decoding(beams: int) -> str:
    return f"beam search ({beams} beams)" if beams > 1 else "greedy"


def reply_time(r: dict[str, Any]) -> str:
    """Seconds per reply of ours: as decoded, and greedy where validation ran both."""
    per = lambda run: run["wall_time_s"] / run["questions"]  # noqa: E731
    if "ours_validation_greedy" not in r:
        return f"Ours takes {per(r['ours']):.1f} s per test reply, greedy."
    return (f"On the validation questions ours takes {per(r['ours_validation']):.1f} s per reply by "
            f"{decoding(r['num_beams'])}, {per(r['ours_validation_greedy']):.1f} s greedy.")


def table(r: dict[str, Any]) -> str:
    t, s, k, beams = r["training"], r["speed"], r["top_k"], r["num_beams"]
    rows = [("ours: LoRA + retrieval", r["ours"]), ("same base, no LoRA, no retrieval", r["base"])]
    if "no_lora" in r:
        rows.append(("same base, retrieval, no LoRA", r["no_lora"]))
    mark = lambda value, goal: f"{value:.1%} ({'met' if value >= goal else 'not met'}, goal {goal:.0%})"  # noqa: E731
    lines = [
        f"Test: {r['answerable']} held-out paraphrased questions about the knowledge base ({r['kb_entries']} entries) "
        f"and {r['out_of_kb']} questions it does not answer; replies by {decoding(beams)}, at most {r['max_new_tokens']} new tokens.",
        "",
        "| | states the key fact | retrieval recall@{k} | out-of-KB handed off |".replace("{k}", str(k)),
        "|---|---|---|---|",
    ]
    for i, (name, run) in enumerate(rows):
        ours, grounded = i == 0, run is r.get("no_lora")
        recall = mark(r["recall"], GOALS["recall"]) if ours else "same" if grounded else "— (none)"
        handoff = mark(r["handoff_rate"], GOALS["handoff"]) if ours else "same" if grounded else "— (never hands off)"
        fact = mark(run["key_fact_rate"], GOALS["key_fact"]) if ours else f"{run['key_fact_rate']:.1%}"
        lines.append(f"| {name} | {fact} | {recall} | {handoff} |")
    lines += [
        "",
        f"Ours states the key fact, by the rank retrieval gave the right entry: {by_rank(r['ours']['replies'])}. "
        f"On the {r['ours_validation']['questions']} answerable validation questions (which choose settings): "
        f"{r['ours_validation']['key_fact_rate']:.1%}"
        + (f" ({decoding(beams)}; greedy: {r['ours_validation_greedy']['key_fact_rate']:.1%})."
           if "ours_validation_greedy" in r else "."),
        rerank_line(r),
        f"Answerable test questions handed off by mistake: {r['false_handoff_rate']:.1%}; hand-off threshold "
        f"{r['threshold']:.3f} (cosine), chosen on the validation questions.",
        f"Perplexity on held-out dialogues ({t['valid_examples']} replies): {r['perplexity']['before']:.2f} before LoRA, "
        f"**{r['perplexity']['after']:.2f}** after. Training: {t['train_examples']} grounded replies, {t['steps']} steps, "
        f"{t['wall_time_s'] / 60:.1f} min{' (an earlier run of this script; measured again)' if t.get('reused') else ''}.",
        f"Generation on CPU ({s['prompt_tokens']}-token grounded prompt, median of {s['repeats']}): `bot.stream` "
        f"{s['stream_tokens_per_s']:.1f} tokens/s vs `model.generate` with KV cache {s['generate_tokens_per_s']:.1f} "
        f"tokens/s ({s['stream_tokens_per_s'] / s['generate_tokens_per_s']:.2f}x); time to first token "
        f"{s['time_to_first_token_s'] * 1000:.0f} ms (prompt and prefill), after retrieval "
        f"{s['retrieval_s'] * 1000:.0f} ms{' (with the re-ranking)' if r['rerank']['depth'] and r['rerank']['weight'] else ''}.",
        reply_time(r),
    ]
    return "\n".join(lines)


def trained_summary(out: str) -> dict[str, Any]:
    """What ``train_chat`` returned when it trained ``out``, from the directory's card."""
    import json

    card = json.loads((Path(out) / "card.json").read_text(encoding="utf-8"))
    return {"out": out, **card["training"], "perplexity": card["metrics"]["perplexity"],
            "retrieval": card["metrics"]["retrieval"], "example": card["example"], "reused": True}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", default="ecomnlp/demo_data/support",
                        help="folder with kb.jsonl, train.jsonl, valid.jsonl and test.jsonl")
    parser.add_argument("--model", default=None, help="causal LM (default: the config's)")
    parser.add_argument("--encoder", default=None, help="retrieval encoder (default: the config's)")
    parser.add_argument("--max-new-tokens", type=int, default=EVAL_REPLY_TOKENS)
    parser.add_argument("--ablation", action="store_true",
                        help="also reply with retrieval but without LoRA (one more pass over the questions)")
    parser.add_argument("--max-steps", type=int, default=None, help="step cap of training (smoke tests)")
    parser.add_argument("--speed-repeats", type=int, default=7,
                        help="timed replies per loop, their median (3 moved the ratio by several percent between runs)")
    parser.add_argument("--out", default="runs/bench-chat", help="where the trained chat model goes")
    parser.add_argument("--trained", action="store_true",
                        help="measure the chat model already in --out (its card gives the training figures) "
                             "instead of training it again")
    parser.add_argument("--report", default="reports/bench_chat.json", help="JSON report to write")
    parser.add_argument("--no-readme", action="store_true", help="do not rewrite the README table")
    opts, config_overrides = parser.parse_known_args()  # the rest overrides the config, e.g. --lora.layers=null
    os.chdir(ROOT)
    from ecomnlp.chat_data import load_questions
    from ecomnlp.chat_training import train_chat
    from ecomnlp.chatbot import load_chatbot
    from ecomnlp.cli import command_arguments, train_chat_command

    data = Path(opts.data_dir)
    overrides = ["--out", opts.out, "--trainer.progress_bar", "false", "--data.kb", str(data / "kb.jsonl"),
                 "--data.train", str(data / "train.jsonl"), "--data.questions", str(data / "valid.jsonl")]
    overrides += [f"--{name}={value}" for name, value in (("model", opts.model), ("encoder", opts.encoder),
                                                           ("trainer.max_steps", opts.max_steps)) if value]
    args = command_arguments(train_chat_command, CONFIG, overrides + config_overrides)
    if opts.trained:
        training = trained_summary(opts.out)
    else:
        print("== training", flush=True)
        training = train_chat(**args)
    bot = load_chatbot(opts.out)
    bot.settings = args["generation"]  # the config decodes, also for a model trained before it said how (--trained)
    questions = load_questions(data / "test.jsonl")
    answerable = [q for q in questions if q.kb is not None]
    out_of_kb = [q for q in questions if q.kb is None]
    k = bot.top_k
    handed = [bot.ground([{"role": "user", "content": q.text}]).handoff for q in questions]
    configurations = [("ours", True, True), ("base", False, False)] + ([("no_lora", False, True)] if opts.ablation else [])
    runs = {}
    for name, adapter, retrieval in configurations:
        print(f"== replies: {name}", flush=True)
        runs[name] = answer_all(bot, answerable, adapter, retrieval, opts.max_new_tokens)
    print("== replies: ours, validation questions", flush=True)
    validation = [q for q in load_questions(data / "valid.jsonl") if q.kb is not None]
    runs["ours_validation"] = answer_all(bot, validation, True, True, opts.max_new_tokens)
    if bot.settings.num_beams > 1:
        print("== replies: ours, validation questions, greedy", flush=True)
        bot.settings = dataclasses.replace(bot.settings, num_beams=1)
        runs["ours_validation_greedy"] = answer_all(bot, validation, True, True, opts.max_new_tokens)
        bot.settings = args["generation"]
    print("== speed", flush=True)
    recall = recall_at(bot, answerable, [1, k])
    report = {
        "finished": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "model": args["model"],
        "encoder": args["encoder"], "data_dir": str(data), "kb_entries": len(bot.retriever.kb),
        "answerable": len(answerable), "out_of_kb": len(out_of_kb), "top_k": k, "threshold": bot.threshold,
        "max_new_tokens": opts.max_new_tokens, "num_beams": bot.settings.num_beams, "recall": recall[f"recall@{k}"]["bot"],
        "rerank": {"depth": bot.rerank_depth, "weight": bot.rerank_weight, **recall},
        "handoff_rate": sum(h for q, h in zip(questions, handed) if q.kb is None) / max(1, len(out_of_kb)),
        "false_handoff_rate": sum(h for q, h in zip(questions, handed) if q.kb is not None) / len(answerable),
        "perplexity": training["perplexity"], "training": {**training, "perplexity": None},
        **runs, "speed": speed(bot, next((q.text for q, h in zip(questions, handed) if q.kb is not None and not h),
                                    answerable[0].text), opts.max_new_tokens, opts.speed_repeats),
    }
    publish(report, opts.report, "bench_chat", table(report), not opts.no_readme)


if __name__ == "__main__":
    sys.exit(main())
