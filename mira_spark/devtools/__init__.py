"""Developer tools, apart from the product: the simulated scorer, the sample corpus, benchmarks."""
