"""Bundled HF config.json files of the supported models."""
