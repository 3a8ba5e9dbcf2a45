"""semifl Pi agent: the CPython device service for capable boards (FL client role)."""
