"""The `bench` command line, presets, tables and speed benchmarks."""
