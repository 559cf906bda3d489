"""Lightning modules and training helpers."""
