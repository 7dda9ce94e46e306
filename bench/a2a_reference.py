"""The reference point for `concierge bench gateway`'s A2A text turns: the official a2a-sdk
Python server (JSON-RPC over HTTP, Starlette under uvicorn) whose agent answers every message
with one fixed sentence — no store, no agent logic. Whatever a real agent does, it cannot be
cheaper than this server doing nothing.

    target/pyclients/bin/python bench/a2a_reference.py --port 8765

Serves POST /a2a (A2A 1.0 `SendMessage`, the same requests the bench sends Concierge) and the
agent card at /.well-known/agent-card.json; prints "ready <port>" once listening.
"""

import argparse
import asyncio

import uvicorn
from starlette.applications import Starlette

from a2a.helpers.proto_helpers import new_text_message
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill

ANSWER = "Your order has shipped and should arrive within three business days."


class FixedAnswer(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        await event_queue.enqueue_event(
            new_text_message(ANSWER, context_id=context.context_id)
        )

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        return None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, default=8765)
    args = parser.parse_args()
    url = f"http://127.0.0.1:{args.port}/a2a"
    card = AgentCard(
        name="Fixed answer",
        description="Answers every message with the same sentence.",
        version="1.0.0",
        supported_interfaces=[
            AgentInterface(url=url, protocol_binding="JSONRPC", protocol_version="1.0")
        ],
        capabilities=AgentCapabilities(streaming=False),
        default_input_modes=["text/plain"],
        default_output_modes=["text/plain"],
        skills=[
            AgentSkill(
                id="answer",
                name="Answer",
                description="Answers with a fixed sentence.",
                tags=["bench"],
            )
        ],
    )
    handler = DefaultRequestHandler(
        agent_executor=FixedAnswer(), task_store=InMemoryTaskStore(), agent_card=card
    )
    routes = create_agent_card_routes(card) + create_jsonrpc_routes(handler, "/a2a")
    app = Starlette(routes=routes)
    config = uvicorn.Config(
        app, host="127.0.0.1", port=args.port, log_level="warning", access_log=False
    )
    server = uvicorn.Server(config)

    async def serve() -> None:
        task = asyncio.create_task(server.serve())
        while not server.started:
            await asyncio.sleep(0.05)
        print(f"ready {args.port}", flush=True)
        await task

    asyncio.run(serve())


if __name__ == "__main__":
    main()
