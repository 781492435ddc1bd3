"""Hopping Too Late (Biran et al. 2024): back-patching and where the bridge entity resolves."""
