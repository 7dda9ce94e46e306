"""Drives Concierge's MCP endpoint with the official Python SDK (PyPI mcp 2.3.0).

Usage: mcp_client.py MCP_URL PRODUCT_ID

Lists the tools and calls check_availability; prints one JSON object with what it saw.
Exits non-zero with a message on the first failure.
"""

import asyncio
import json
import sys

from mcp import Client


def check(cond, what):
    if not cond:
        raise SystemExit(f"mcp_client: {what}")


async def main(url, product_id):
    seen = {}
    async with Client(url) as client:
        seen["protocol_version"] = client.protocol_version
        tools = await client.list_tools()
        by_name = {t.name: t for t in tools.tools}
        check("get_order" in by_name and "check_availability" in by_name,
              f"tools missing: {sorted(by_name)}")
        schema = by_name["check_availability"].input_schema
        check(schema.get("required") == ["product_id"], f"schema: {schema}")
        seen["tools"] = sorted(by_name)
        result = await client.call_tool("check_availability", {"product_id": product_id})
        check(not result.is_error, f"check_availability failed: {result}")
        check(result.structured_content is not None, "no structured content")
        seen["call"] = result.structured_content
        seen["text"] = [c.text for c in result.content if c.type == "text"]
        refused = await client.call_tool("get_order", {"order_id": "#W0000000"})
        seen["refused"] = {"is_error": refused.is_error,
                           "structured": refused.structured_content}
    print(json.dumps(seen))


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
