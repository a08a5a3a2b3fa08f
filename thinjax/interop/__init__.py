"""Bridges to other frameworks' checkpoints."""
