"""Applications: classify, features, FVD, fine-tuning, inflation, export and the benchmark."""
