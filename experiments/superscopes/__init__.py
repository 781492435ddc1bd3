"""Superscopes (Jacobi & Niv 2025): Figures 1-3 and the hidden-state examples."""
