"""Serving the relevance model: prefill-only scoring, export, and the HTTP service."""
