"""flytekit's literal type of a dataclass, built once per type.

flytekit builds a dataclass's JSON schema (with mashumaro) each time a task interface
names the type, and the stage tasks take config sections as dataclass inputs: compiling
the dynamic blocks of a 300-epoch 7B run spent about 50 of its 69 s there
(tests/test_node_count.py). The literal type depends on the type alone, so it is kept
per type.
"""

from __future__ import annotations

from flytekit.core.type_engine import DataclassTransformer

_CACHE: dict = {}
_uncached = DataclassTransformer.get_literal_type


def get_literal_type(self, t):
    try:
        hit = t in _CACHE
    except TypeError:  # an unhashable annotation: nothing to key it by
        return _uncached(self, t)
    if not hit:
        _CACHE[t] = _uncached(self, t)
    return _CACHE[t]


if _uncached.__module__ != __name__:  # once, however often this module is reloaded
    DataclassTransformer.get_literal_type = get_literal_type
