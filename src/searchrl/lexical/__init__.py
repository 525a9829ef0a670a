"""The lexical route: BM25 over product text (bm25s with a Snowball stemmer)."""
