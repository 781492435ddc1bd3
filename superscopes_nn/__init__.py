"""superscopes_nn: read a language model's hidden states by letting the model describe them."""
__version__ = "0.1.0"
