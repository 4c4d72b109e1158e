"""Thin Flyte tasks: each calls spark_core and declares resources, images and cache versions."""
