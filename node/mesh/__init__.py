"""The fog's mesh: addresses and WireGuard."""
