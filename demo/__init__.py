"""The `make demo` walk-through and the loop-device pools it, the tests and the benchmarks stand on."""
