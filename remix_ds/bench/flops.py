"""FLOP accounting for MFU: 6N per token for the dense matmuls plus attention.

Per token of an example of length s (forward + backward = 3x forward), following PaLM
(Chowdhery et al. 2022, appendix B): 6 * N + 12 * L * d * s, where N counts the parameters that
take part in matmuls (everything but the input embedding table), L layers, d = heads * head_dim.
For packed batches s is each example's own length (attention never crosses examples).
"""

from __future__ import annotations

from typing import Sequence

# Dense bf16 tensor-core peak in TFLOP/s by device-name substring (vendor datasheets).
PEAK_BF16_TFLOPS = {
    "H200": 989.0,
    "H100 SXM": 989.0,
    "H100 NVL": 835.0,
    "H100 PCIe": 756.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10G": 125.0,
    "L4": 121.0,
}


def peak_tflops(device_name: str) -> float | None:
    for key, value in PEAK_BF16_TFLOPS.items():
        if key in device_name:
            return value
    return None


def matmul_params(model_config, num_params: int) -> int:
    """Parameters used in matmuls: all but the input embedding table."""
    return num_params - model_config.vocab_size * model_config.hidden_size


def train_flops(model_config, num_params: int, example_lengths: Sequence[int]) -> float:
    """Training FLOPs (forward + backward) of one pass over examples of these lengths."""
    n = matmul_params(model_config, num_params)
    layers = model_config.num_hidden_layers
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    d_attn = model_config.num_attention_heads * head_dim
    tokens = sum(example_lengths)
    attention = sum(12 * layers * d_attn * s * s for s in example_lengths)
    return 6.0 * n * tokens + float(attention)


def mfu(flops_per_second: float, device_name: str, num_devices: int) -> float | None:
    """Model FLOPs utilization against the devices' dense bf16 peak; None for unknown devices."""
    peak = peak_tflops(device_name)
    if peak is None:
        return None
    return flops_per_second / (peak * 1e12 * num_devices)
