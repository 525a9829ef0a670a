"""The completion format: the prompt a (query, product) pair is rendered into, and the strict parser
that reads a completion back (grade line, the five reasoning steps, their verdicts)."""
