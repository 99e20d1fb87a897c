"""Models, dataset readers, converters and generated data (not adapters): used by the
integrations, the demos, the examples, the benchmarks and the tests."""
