"""Fast paths (installed as `remix_ds.kernels`), each beside its pure-torch reference.

- `attention`: block-diagonal causal attention for packed batches (flash-attn varlen, torch varlen,
  flex attention; SDPA reference), registered in transformers as `attn_implementation="remix_varlen"`.
- `linear_cross_entropy`: lm_head + summed cross-entropy without full logits (chunked pure torch;
  Liger-Kernel on CUDA), used by the engine's loss under `model.fused_loss`.
"""
