"""The CPU inference engine: fused oneDNN conv+BN+ReLU units, temporal Winograd, separable pools."""
