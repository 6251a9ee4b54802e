"""The benchmarks' own machinery (bench/), run small."""
