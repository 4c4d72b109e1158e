"""Thin Flyte tasks: each calls spark_core and declares resources, images and cache versions."""

from tasks import literal_types as _literal_types  # noqa: E402,F401  (a dataclass's literal type, once per type)
