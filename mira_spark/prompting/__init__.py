"""Prompts: the rubric, chat messages, token budgets and the constrained-output format."""
