"""remix-ds: DeepSpeed training for studying and preventing forgetting in staged fine-tuning."""

__version__ = "0.1.0"
