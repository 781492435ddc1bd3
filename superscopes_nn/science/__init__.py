"""The science on top of the engine: Superscopes α lists and protocols, scoring, chance levels, the random-vector control, baselines, cross-model maps, fine-tuning."""
