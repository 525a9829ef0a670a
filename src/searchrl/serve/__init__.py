"""The HTTP service: FastAPI app, micro-batcher and /v1/search (the scorer itself lives in relevance/)."""
