"""Data pipeline: records -> tokens -> mixed stream -> packed micro-batches."""
