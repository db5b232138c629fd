"""The applications built on the library: the CLI, the HTTP service, the simulated model's
servers, the MCP server and the workers. ``import maker`` never imports them; their names on
:mod:`maker` load on first use."""
