"""Bundled example models, used by ``surgeon run --example NAME``."""
