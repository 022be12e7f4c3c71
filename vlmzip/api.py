"""The public entry points: ``compress``, ``restore`` and ``stats``."""

from __future__ import annotations

import weakref

from torch import nn

from vlmzip.errors import VlmzipError
from vlmzip.policy import Policy
from vlmzip.registry import adapter_for
from vlmzip.runtime.session import Session
from vlmzip.stats import Stats

# compressed model -> its session; weak, so a dropped model takes its session with it
_SESSIONS: weakref.WeakKeyDictionary[nn.Module, Session] = weakref.WeakKeyDictionary()


def compress(model: nn.Module, policy: Policy | str) -> nn.Module:
    """Install ``policy`` on ``model`` (in place) and return it; ``model.generate`` then runs compressed.

    Compressing an already compressed model replaces its policy. Raises a ``ValueError`` subclass for an
    invalid policy, an unsupported model family or attention backend.
    """
    policy = Policy.coerce(policy)
    adapter = adapter_for(model)
    previous = _SESSIONS.pop(model, None)
    if previous is not None:
        previous.remove()  # the new session must see the model's own attention backends
    try:
        session = Session(model, policy, adapter)
        session.install()
    except Exception:
        if previous is not None:  # a rejected policy leaves the previous one in place
            previous.install()
            _SESSIONS[model] = previous
        raise
    _SESSIONS[model] = session
    return model


def restore(model: nn.Module) -> nn.Module:
    """Remove everything ``compress`` installed; the model then behaves exactly as before. Idempotent."""
    session = _SESSIONS.pop(model, None)
    if session is not None:
        session.remove()
    return model


def stats(model: nn.Module) -> Stats:
    """What the last forward or ``generate`` of the compressed ``model`` did."""
    session = _SESSIONS.get(model)
    if session is None:
        raise VlmzipError("this model is not compressed: call vlmzip.compress(model, policy) first")
    stats = session.stats()
    if stats is None:
        raise VlmzipError("the compressed model has not run yet: call model.generate(...) or model(...) first")
    return stats


def policy_of(model: nn.Module) -> Policy | None:
    """The policy installed on ``model``, or ``None``."""
    session = _SESSIONS.get(model)
    return session.policy if session is not None else None
