"""Mask personal data in chat text before it is logged: e-mail addresses, phone numbers, order numbers.

``mask_pii`` replaces each e-mail address with ``[EMAIL]``, each phone number with ``[PHONE]`` and the id
of each order number with ``[ORDER]`` (the words before it, e.g. "order #" or "订单号：", stay), in
English and Chinese text. One regular expression per kind, applied in that order, so digits inside an
address or an order id are never read as a phone number.

Ordinary numbers stay: prices ($25.99, ¥199), quantities, "30 days", dates (2026-11-29), "size 42".
An order id needs a lead word (order, order no., order number, order id, order #, 订单, 订单号) or a
'#' right before it, at least 6 letters or digits and at least one digit. Digits are ASCII digits;
full-width digits (１３８…) are not recognised.
"""
from __future__ import annotations

import re

EMAIL = re.compile(r"[A-Za-z0-9._%+-]+@(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,}")

PHONE = re.compile(
    r"""
    (?<![\w+])                                              # not the tail of a longer number or word
    (?:
        \+ (?=(?:[ ().-]*\d){7})                            # international, 7 digits or more:
            \d{1,3} (?:[ .-]?(?:\(\d{1,4}\)|\d{1,4})){2,5}    #   +1 (555) 123-4567, +44 20 7946 0958
      | (?:1[ .-])? (?:\(\d{3}\)|\d{3}) [ .-]? \d{3} [ .-] \d{4}  # US: 555-123-4567, (555) 123 4567, 1-800-555-1234
      | 1[3-9]\d [ -]? \d{4} [ -]? \d{4}                     # Chinese mobile: 13800138000, 138 0013 8000
      | 0\d{2,3} - \d{7,8}                                  # Chinese landline: 010-12345678, 0755-1234567
    )
    (?!\w)                                                  # not followed by more digits or letters
    """,
    re.VERBOSE | re.ASCII,
)

ORDER = re.compile(
    r"""
    (?P<lead>                                                # kept: the words that say an order id follows
        \border\b (?:[ \t]*(?:no\b\.?|number\b|num\b\.?|id\b))?  # order, order no., order number, order id
            (?:[ \t]+is\b)? [ \t:#]*                          #   then "is", ":", "#", spaces
      | 订单编?号? (?:是|为)? [ \t:：#]*                       # 订单, 订单号, 订单编号, then 是/为, ：
      | (?<!\w) \#                                           # a bare '#' right before the id
    )
    (?P<id> (?=[A-Za-z-]*\d) [A-Za-z0-9] (?:-?[A-Za-z0-9]){5,} )  # 6+ letters/digits, one a digit, inner '-'
    (?!\w)
    """,
    re.VERBOSE | re.ASCII | re.IGNORECASE,
)


def mask_pii(text: str) -> str:
    """``text`` with e-mail addresses, order ids and phone numbers replaced by [EMAIL], [ORDER], [PHONE]."""
    text = EMAIL.sub("[EMAIL]", text)
    text = ORDER.sub(r"\g<lead>[ORDER]", text)
    return PHONE.sub("[PHONE]", text)
