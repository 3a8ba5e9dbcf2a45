"""The composition root: `semifl run`, `serve`, `fleet` and in-process runs put the layers together here."""
