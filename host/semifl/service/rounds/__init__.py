"""The kinds of round: each one object that owns its inbound handling, its state and how it merges."""
