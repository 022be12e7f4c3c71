"""Built-in compression methods, one small module each; importing this package registers them.

``vlmzip/__init__.py`` imports it, so the built-ins are registered whenever vlmzip is; the registry itself
never imports a method.
"""

from vlmzip.methods import (  # noqa: F401
    adaptinfer,
    blindsight,
    cdpruner,
    dart,
    divprune,
    evs,
    fastv,
    fastvid,
    flexprefill,
    kivi,
    knorm,
    look_m,
    minference,
    mustdrop,
    mustdrop_decode,
    mustdrop_vision,
    pyramiddrop,
    random,
    random_kv,
    snapkv,
    sparsevlm,
    text_relevance,
    uniform,
    visionzip,
    vtc_cls,
    xattention,
    zeroth_order,
    zipvl,
    zipvl_kv,
)
