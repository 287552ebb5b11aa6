"""Generation backends shared by evaluation (completions) and synthesis (LLM-written documents)."""
