"""Measures every layer above shares: relevance and retrieval metrics (measures), query-bootstrap
intervals, paired differences and their verdicts (stats)."""
