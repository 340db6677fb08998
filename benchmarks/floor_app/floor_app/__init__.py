"""The deployment floor: a minimal Flower App (see ../pyproject.toml)."""
