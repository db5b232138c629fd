"""The applications built on the library: the CLI, the HTTP service, the simulated model's
servers and the MCP server. ``import maker`` never imports them; their names on :mod:`maker`
load on first use."""
