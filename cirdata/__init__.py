"""The benchmark world, without torch: the synthetic CIR generator and its vocabulary, the public data
sets' loaders, a split as an image table + triplets, the evaluation protocols (ranked ids -> metrics)
and the benchmark servers' submission files."""
