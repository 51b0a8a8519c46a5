"""REMIX experiments: grids of D_A x D_B x strategy, result tables, plots, logit lens, preservation."""
