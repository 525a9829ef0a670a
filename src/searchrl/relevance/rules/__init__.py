"""The rule knowledge base and what grades with it: rules.yaml compiled for matching (kb, rule_text),
the rule engine (engine), the teachers that write reference completions (teacher, llm_teacher), and
rule-graded synthetic pairs (synthetic)."""
