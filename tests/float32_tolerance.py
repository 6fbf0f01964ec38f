"""Tolerances shared by tests that compare two float32 computations of the same quantity.

Test modules import these (pyproject's pytest `pythonpath` puts tests/ on sys.path) so one
bound has one definition. CI machines differ in CPU model and cache sizes, and XLA:CPU's
matmul kernels pick their blocking (so their summation order) from both: a bound that holds
on one machine by a factor of two can fail on the next (seen: CI failed at 1e-5 on a bound
that held here).
"""

# |sampler logprob - trainer logprob| over every token of a rollout. The sampler scores a
# token in a one-row decode step (a matrix-vector product against the KV cache), the trainer
# in a full-sequence forward (matrix-matrix): the same math in a different order, a few
# float32 ulps of the logits per layer. Sampled tokens reach logprobs of -10 to -20, where one
# ulp is ~1e-6, so 1e-5 sits at the rounding floor. A real bug (a position off by one, a
# wrong mask or RoPE angle, a stale cache row) moves logprobs by 1e-2 or more.
LOGP_MISMATCH_MAX = 1e-4
