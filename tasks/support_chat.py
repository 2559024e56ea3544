"""Customer-support chat: how a reply is grounded on knowledge-base passages, and what the bot says
when the knowledge base has nothing relevant. The causal LM, its LoRA adapter, retrieval and
generation live in ``ecomnlp.chat_training`` and ``ecomnlp.chatbot``; this module is the task's own text.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

if TYPE_CHECKING:
    from ecomnlp.knowledge import Entry

_CJK = re.compile(r"[\u4e00-\u9fff]")


@dataclass
class SupportChat:
    """The assistant's instructions with the retrieved passages, and the hand-off reply."""

    store: str = "our store"

    def system_prompt(self, passages: Sequence[Entry]) -> str:
        """Instructions plus each passage as ``[id] title: text``; without passages, the plain persona."""
        persona = f"You are the customer support assistant of {self.store}."
        if not passages:
            return persona
        lines = "\n".join(f"[{p.id}] {p.title}: {p.text}" for p in passages)
        return (f"{persona} Answer the customer's question using only the store information below, "
                f"state the relevant fact exactly as written, and keep the answer short. Reply in the "
                f"customer's language.\n\nStore information:\n{lines}")

    def handoff(self, question: str) -> str:
        """The reply when nothing in the knowledge base answers ``question``, in its language."""
        if _CJK.search(question):
            return "抱歉，这个问题我无法确定答案。我会为您转接人工客服，请稍候。"
        return "I'm not sure about that one, so I'll pass you to a human colleague who can help. Please hold on."
