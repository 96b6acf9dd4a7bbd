//! Benchmark results: parsing the `BENCH` lines the kernels print and writing them as JSON.
