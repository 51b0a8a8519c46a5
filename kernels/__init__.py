"""Fast paths (installed as `remix_ds.kernels`), each beside its pure-torch reference."""
