"""The application layer: the `tenantmail` command line, the embedded demo, doctor and the process-stack
harness that the demo, the tests and the benchmarks share. Nothing below imports it."""
