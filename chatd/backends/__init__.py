"""One module per engine. ``registry.open_backends`` picks them from the settings' URLs."""
