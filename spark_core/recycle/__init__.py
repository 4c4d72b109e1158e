"""Recycling rollouts into judge (pointwise/pairwise) and reflection prompts."""

from spark_core.recycle.build import recycle, stable_seed
from spark_core.recycle.templates import (
    ALL_TEMPLATES,
    PAIRWISE,
    POINTWISE,
    POINTWISE_AB,
    POINTWISE_YN,
    REFLECTION_ANS,
    REFLECTION_COT,
    TEMPLATES_BY_ID,
    Template,
    fill,
)

__all__ = [
    "ALL_TEMPLATES",
    "PAIRWISE",
    "POINTWISE",
    "POINTWISE_AB",
    "POINTWISE_YN",
    "REFLECTION_ANS",
    "REFLECTION_COT",
    "TEMPLATES_BY_ID",
    "Template",
    "fill",
    "recycle",
    "stable_seed",
]
