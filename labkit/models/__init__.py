"""Small reference models built from configs and trained here (no hub downloads)."""
