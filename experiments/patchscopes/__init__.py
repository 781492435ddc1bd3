"""Patchscopes (Ghandeharioun et al. 2024): token identity, attribute extraction, entity resolution, multi-hop CoT."""
