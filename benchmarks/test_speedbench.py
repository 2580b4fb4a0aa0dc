"""The speculative-decoding benchmark suite: one test per matrix case.

The matrix comes from the command line and speedbench.yaml (see README); each test measures its
case against the engine fixture and fails when a regression gate or a request fails.
"""


def test_speculative_decoding(speedbench_run):
    speedbench_run.check()
