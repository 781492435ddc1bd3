"""Li et al. 2025: verbalizer vs source, and the PersonaQA control."""
