"""The test bed: the synthetic world whose objects are known (`toyworld`), the tiny model and
its builders (`tiny`, `family_checkpoints`: one tiny checkpoint per family), and the demo
(`demo`: synthetic rounds, simulated annotators, the loop `make demo` runs). Tests,
benchmarks and the demo use it; the production app does not."""
