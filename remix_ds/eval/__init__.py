"""Evaluation: exact-match matchers, fused evaluator, generation evaluator."""
