"""The inversion methods an edit of the user's images can use (docs/methods.md, "Inversion"), in a module free of
torch and diffusers, so that ``hspace-edit --help`` lists them without loading a model library."""

INVERSIONS = ("edit_friendly", "ddim")
"""Edit-friendly DDPM inversion (exact) or deterministic DDIM inversion (approximate)."""
