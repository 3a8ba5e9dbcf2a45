"""Watching the fleet: a read-only web page with live updates (server-sent events), a JSON API, Prometheus
metrics and a terminal table, over a running session or a finished run's folder (docs/ui.md).

A source (`live.Live` over a session, `folder.RunFolder` over runs/NAME) answers the same questions:
`state`, `rows` (the fleet table), `rounds`, `round`, `rejections`, `counters`. `server.UIServer` serves
one or more sources on its own thread; it only reads them. The page is static files (`static/`) with
plain JavaScript and uPlot, vendored (`static/VENDORED.md`): nothing is built at install time.
"""
