"""``maker mcp``: the engine as Model Context Protocol tools."""

from ._mcp import create_mcp_server
from ._mcp_config import McpConfig, ModelConfig, load_mcp_config
from ._mcp_tools import McpTools, ToolError, ToolLimits

__all__ = [
    "McpConfig",
    "McpTools",
    "ModelConfig",
    "ToolError",
    "ToolLimits",
    "create_mcp_server",
    "load_mcp_config",
]
