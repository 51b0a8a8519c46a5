"""Comparison baselines that only the benchmarks need (not part of the installed package).

`remix-ds bench ...` imports these from a source checkout (`remix_ds.bench.checkout_benchmarks`
puts the checkout on `sys.path`); installed without a checkout, the benchmarks that need them stop
with a one-line error. Tests use some of them as references (old packer, old stage build).

- `random_words`: the naive per-sample loop, a per-word numpy table with one concatenate, and the
  fully vectorized numpy sampler (padded table, one boolean gather; ids identical to ours).
- `packing`: the packer before the O(n log n) rewrite, and HF `group_by_length` + pad.
- `stage`: the generic-row build that decodes every drawn document.
- `loss`: the plain lm_head + cross-entropy that skips unsupervised rows.
"""
