"""Model structure: where each site lives (resolved by structure, per layer), loading and wrapping, the resolved-once ModelInfo, cache row copies, structural twins, the plain-HF reference."""
