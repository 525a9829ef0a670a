"""The relevance LLM, in the order data flows through it: the completion format (format), the rule
knowledge base and teachers (rules), the model (model), scoring a trained model (scoring), and the
recipes that train it (train). Each subpackage imports only from those before it."""
