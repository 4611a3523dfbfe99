"""An independent Airlock API client: nats-py and the published JSON Schemas (schemas/json/api/), nothing else
of Airlock. Submits a run, follows nothing, polls its status until it ends, reads its result and logs, and
checks every request and reply against the schemas.

Environment: NATS_URL (default nats://127.0.0.1:4222), AIRLOCK_SCHEMAS (the schemas/json directory).
Exit 0 and prints "python client: ok" on success.
"""

import asyncio
import json
import os
import sys
import time
import uuid

import jsonschema
import nats

SCHEMAS = os.environ.get("AIRLOCK_SCHEMAS", os.path.join(os.path.dirname(__file__), "../../schemas/json"))


def schema(name):
    with open(os.path.join(SCHEMAS, name)) as f:
        return json.load(f)


def check(value, name):
    jsonschema.validate(value, schema(name))
    return value


async def call(nc, op, request, request_schema, reply_schema):
    check(request, request_schema)
    msg = await nc.request(f"airlock.api.{op}", json.dumps(request).encode(), timeout=10)
    reply = json.loads(msg.data)
    if "error" in reply:
        check(reply, "api/error.v1.json")
        return reply
    return check(reply, reply_schema)


async def main():
    nc = await nats.connect(os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    run_id = "py-" + uuid.uuid4().hex[:12]
    run = {
        "id": run_id,
        "image": "docker.io/library/busybox:1.36",
        "command": ["/bin/sh", "-c", 'echo "hello from python"; printf \'{"lang":"python"}\' > "$AIRLOCK_RESULT_FILE"'],
        "labels": {"client": "python"},
        "deadline_seconds": 60,
    }
    check(run, "run-request.v1.json")
    reply = await call(nc, "submit", {"queue": "default", "request": run}, "api/submit-request.v1.json", "api/submit-reply.v1.json")
    assert reply == {"id": run_id}, reply

    bad = await call(nc, "submit", {"queue": "default", "request": {"id": "x", "image": ""}}, "api/submit-request.v1.json", "api/submit-reply.v1.json")
    assert bad["error"]["code"] == "invalid", bad
    assert any(d["field"] == "request.image" for d in bad["error"]["details"]), bad

    deadline = time.monotonic() + 60
    while True:
        view = await call(nc, "status", {"id": run_id}, "api/run-ref.v1.json", "api/run-view.v1.json")
        # No record until a dispatcher took the request from the queue.
        assert "error" not in view or view["error"]["code"] == "not_found", view
        if view.get("status") in ("succeeded", "failed", "timed_out", "cancelled", "rejected"):
            break
        assert time.monotonic() < deadline, f"run did not end: {view}"
        await asyncio.sleep(0.2)
    assert view["status"] == "succeeded", view
    assert view["labels"] == {"client": "python"}, view

    result = await call(nc, "result", {"id": run_id}, "api/run-ref.v1.json", "api/result-reply.v1.json")
    assert result["result"] == {"lang": "python"}, result

    logs = await call(nc, "logs", {"id": run_id, "follow": False}, "api/logs-request.v1.json", "api/log-chunk.v1.json")
    assert "hello from python" in logs["data"], logs
    assert logs["end"] is True, logs

    page = await call(nc, "list", {"label": "client=python"}, "api/list-request.v1.json", "api/list-reply.v1.json")
    assert [r["id"] for r in page["runs"]] == [run_id], page

    missing = await call(nc, "status", {"id": "py-missing"}, "api/run-ref.v1.json", "api/run-view.v1.json")
    assert missing["error"]["code"] == "not_found", missing

    await nc.close()
    print("python client: ok")


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except Exception as e:  # one line for the Rust test's message
        print(f"python client failed: {e!r}", file=sys.stderr)
        raise
