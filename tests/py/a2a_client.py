"""Drives Concierge's A2A endpoint with the a2a-sdk client (PyPI a2a-sdk 1.3.0).

Usage: a2a_client.py BASE_URL PRODUCT_ID ORDER_ID

Fetches the agent card, sends a text message (streaming) and a structured data-part request
(non-streaming), reads the task back with GetTask and lists the context's tasks. Checks what it
can on the way and prints one JSON object with what it saw, for the Rust test to check further.
Exits non-zero with a message on the first failure.
"""

import asyncio
import json
import sys
import uuid

import httpx
from google.protobuf import json_format, struct_pb2

from a2a.client import A2ACardResolver, ClientConfig, create_client
from a2a.types import (
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageRequest,
    TaskState,
)


def check(cond, what):
    if not cond:
        raise SystemExit(f"a2a_client: {what}")


def data_part(obj):
    value = struct_pb2.Value()
    json_format.ParseDict(obj, value)
    return Part(data=value)


async def last_task(client, request):
    """Sends a message and returns the task from the last event that carries one."""
    task = None
    events = []
    async for event in client.send_message(request):
        events.append(event.WhichOneof("payload"))
        if event.HasField("task"):
            task = event.task
        elif event.HasField("status_update") and task is not None:
            task.status.CopyFrom(event.status_update.status)
        elif event.HasField("artifact_update") and task is not None:
            task.artifacts.append(event.artifact_update.artifact)
    return task, events


async def main(base, product_id, order_id):
    seen = {}
    async with httpx.AsyncClient() as http:
        card = await A2ACardResolver(http, base).get_agent_card()
    check(card.name, "the card has no name")
    check(any(i.protocol_binding == "JSONRPC" and i.protocol_version.startswith("1.")
              for i in card.supported_interfaces), "the card offers no JSON-RPC 1.0 interface")
    seen["card"] = {"name": card.name, "skills": [s.id for s in card.skills],
                    "streaming": card.capabilities.streaming}

    # A text message, streamed (the card says it streams): it goes to the brand agent.
    streaming = await create_client(base, client_config=ClientConfig(streaming=True))
    text = SendMessageRequest(message=Message(
        role=Role.ROLE_USER, message_id=str(uuid.uuid4()),
        parts=[Part(text=f"Where is my order {order_id}?")]))
    task, events = await last_task(streaming, text)
    check(task is not None, f"no task in the stream: {events}")
    seen["text"] = {
        "task_id": task.id, "context_id": task.context_id, "events": events,
        "state": TaskState.Name(task.status.state),
        "reply": "".join(p.text for p in task.status.message.parts),
    }
    await streaming.close()

    # A structured request in a data part, not streamed: the tool runs directly.
    client = await create_client(base, client_config=ClientConfig(streaming=False))
    data = SendMessageRequest(message=Message(
        role=Role.ROLE_USER, message_id=str(uuid.uuid4()),
        context_id=seen["text"]["context_id"],
        parts=[data_part({"action": "check_availability", "product_id": product_id})]))
    task, events = await last_task(client, data)
    check(task is not None, f"no task for the data part: {events}")
    check(task.status.state == TaskState.TASK_STATE_COMPLETED,
          f"the data-part task is {TaskState.Name(task.status.state)}")
    check(task.artifacts and task.artifacts[0].parts[0].HasField("data"),
          "the data-part task has no data artifact")
    result = json_format.MessageToDict(task.artifacts[0].parts[0].data)
    seen["data"] = {"task_id": task.id, "result": result}

    # Read it back.
    got = await client.get_task(GetTaskRequest(id=task.id))
    check(got.id == task.id, "GetTask returned another task")
    check(got.status.state == TaskState.TASK_STATE_COMPLETED, "GetTask: not completed")
    check(json_format.MessageToDict(got.artifacts[0].parts[0].data) == result,
          "GetTask: the artifact differs")
    seen["get"] = {"state": TaskState.Name(got.status.state),
                   "history": len(got.history)}

    listed = await client.list_tasks(ListTasksRequest(context_id=seen["text"]["context_id"]))
    seen["list"] = sorted(t.id for t in listed.tasks)
    await client.close()
    print(json.dumps(seen))


if __name__ == "__main__":
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    asyncio.run(main(*sys.argv[1:]))
