"""lightgen-bench: GenEval, FID, the testbed world, ablations and the CLI."""
