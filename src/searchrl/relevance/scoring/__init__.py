"""Scoring with a trained relevance model: grade probabilities from the first token (scorer, prefill),
cumulative-probability tiering (tiering), evaluation on a split (evaluate), and export."""
