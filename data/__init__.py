"""Data preparation for the Parameter Golf kit: tokenizer, shards, byte accounting.

Run ``python -m data.prepare --help`` for the command line.
"""
