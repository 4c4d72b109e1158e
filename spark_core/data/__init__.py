"""Training/eval data: the synthetic visual-math generator and the user-data loader."""

from spark_core.data.loader import SPARK_SUFFIX, DataError, load_rows, strip_suffix
from spark_core.data.synthetic import (
    READABLE_TASKS,
    TASKS,
    generate,
    worked_solution,
    write_benchmark_dataset,
    write_spark_dataset,
)

__all__ = [
    "DataError",
    "SPARK_SUFFIX",
    "READABLE_TASKS",
    "TASKS",
    "generate",
    "load_rows",
    "strip_suffix",
    "worked_solution",
    "write_benchmark_dataset",
    "write_spark_dataset",
]
