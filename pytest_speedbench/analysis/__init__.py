"""Post-hoc analysis of saved results: `speedbench sweep` (the best draft length per batch size,
the random-token control) and `speedbench predict` (speedup for an unmeasured workload mix).

`sweeps` reads the results entries (`Entry`: a `Case` plus its `extra_info`) and renders;
`sweep` and `predict` hold the maths (pure functions).
"""
