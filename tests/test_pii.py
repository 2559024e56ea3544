"""Masking personal data before logging: e-mails, phones and order ids masked, ordinary numbers kept."""
from __future__ import annotations

import pytest

from ecomnlp.pii import mask_pii

MASKED = [
    # e-mail
    ("write to john.doe+shop@mail.example.co.uk.", "write to [EMAIL]."),
    ("我的邮箱是13800138000@qq.com，谢谢", "我的邮箱是[EMAIL]，谢谢"),
    # phones: international, US, Chinese
    ("call +1 (555) 123-4567 today", "call [PHONE] today"),
    ("UK office: +44 20 7946 0958", "UK office: [PHONE]"),
    ("+86 138 0013 8000 or +8613800138000", "[PHONE] or [PHONE]"),
    ("555-123-4567, (555) 123 4567, 555.123.4567", "[PHONE], [PHONE], [PHONE]"),
    ("toll free 1-800-555-1234.", "toll free [PHONE]."),
    ("手机13800138000，座机010-12345678", "手机[PHONE]，座机[PHONE]"),
    ("请打138 0013 8000", "请打[PHONE]"),
    # order ids: the lead words stay
    ("my order #A12345678 has not arrived", "my order #[ORDER] has not arrived"),
    ("order number 2023-112-9876", "order number [ORDER]"),
    ("Order No. AB123456, order id: 7788990011", "Order No. [ORDER], order id: [ORDER]"),
    ("my order number is ab-12cd-34ef", "my order number is [ORDER]"),
    ("order#A12345678 and #B7654321", "order#[ORDER] and #[ORDER]"),
    ("订单号：202311290001", "订单号：[ORDER]"),
    ("订单 A123456 还没到，订单号是 202311290002", "订单 [ORDER] 还没到，订单号是 [ORDER]"),
    # all kinds together
    ("order #A12345678, call 555-123-4567 or mail a@b.com",
     "order #[ORDER], call [PHONE] or mail [EMAIL]"),
]

KEPT = [
    "it costs $25.99, or ¥199 for two",
    "returns within 30 days, 7天无理由退货",
    "delivered on 2026-11-29 at 10:30",
    "size 42, qty 3, 共3件",
    "I ordered 3 items; order 12345 is too short to be an id",
    "what is my order status?",
    "订单已发货",
    "we sold 100000 units in 20261129",
    "ISBN 978-0-13-468599-1, version 2.0.123456",
    "scored +12 34 points, +1 day",
    "issue #1 best seller",
    "555-123-45678 has too many digits",
]


@pytest.mark.parametrize(("text", "expected"), MASKED)
def test_personal_data_is_masked(text: str, expected: str) -> None:
    assert mask_pii(text) == expected


@pytest.mark.parametrize("text", KEPT)
def test_ordinary_numbers_are_kept(text: str) -> None:
    assert mask_pii(text) == text


def test_masking_is_idempotent() -> None:
    masked = mask_pii(" ".join(text for text, _ in MASKED))
    assert mask_pii(masked) == masked


def test_imports_nothing_heavy() -> None:
    import subprocess
    import sys

    code = "import sys, ecomnlp.pii; print(sorted({'torch', 'transformers', 'datasets'} & set(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
