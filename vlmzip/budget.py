"""How many visual tokens a ``keep`` value leaves out of ``n``.

``keep`` is either a fraction in (0, 1] (a Python ``float``; ``"0.5"`` or ``"1.0"`` in a policy string) or a
positive token count (an ``int``; ``"64"`` in a policy string). ``keep=1.0`` keeps everything, ``keep=1``
keeps one token.
"""

from __future__ import annotations

import math

from vlmzip.errors import PolicyError

Keep = float | int


def validate_keep(keep: object, owner: str) -> Keep:
    """Return ``keep`` if it is a fraction in (0, 1] or a positive count, else raise ``PolicyError``."""
    if isinstance(keep, bool) or not isinstance(keep, (int, float)):
        raise PolicyError(f"{owner}: keep must be a fraction in (0, 1] or a positive integer count, got {keep!r}")
    if isinstance(keep, float):
        if not (0.0 < keep <= 1.0) or math.isnan(keep):
            raise PolicyError(
                f"{owner}: keep={keep} is out of range; a fraction must be in (0, 1] "
                "(write an integer such as keep=64 for a token count)"
            )
    elif keep < 1:
        raise PolicyError(f"{owner}: keep={keep} must keep at least one token (a count >= 1 or a fraction in (0, 1])")
    return keep


def kept_count(keep: Keep, n: int) -> int:
    """Number of tokens ``keep`` leaves out of ``n`` (never more than ``n``; at least 1 when ``n > 0``)."""
    if n <= 0:
        return 0
    if isinstance(keep, float):
        return min(n, max(1, math.floor(keep * n + 0.5)))
    return min(n, keep)
