"""Relevance model pieces: prompt and completion format, parser, rule engine, CoT teachers."""
