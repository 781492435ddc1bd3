"""Data loaders and the files that ship with the package (LRE, Fig 3 prompts, entities, two-hop queries, PersonaQA, published sets)."""
