"""Shared infrastructure: registries, the experiment config, the generic trainer and export."""
