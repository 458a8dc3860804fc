"""A stdlib MCP client an agent inside a portal VM could be: it runs ``nexus-mcp`` (the portal's gateway over
stdio), initializes, makes the calls given as JSON in argv[1] (``[[method, params], ...]``) and prints one JSON
document: the answers (result or error) in order. Copied into the portal and run there by the e2e tests."""

import json
import subprocess
import sys
from typing import IO, Any


class Session:
    def __init__(self, stdin: IO[str], stdout: IO[str]) -> None:
        self.stdin, self.stdout = stdin, stdout

    def send(self, message: dict[str, Any]) -> None:
        self.stdin.write(json.dumps(message) + "\n")
        self.stdin.flush()

    def ask(self, request_id: int, method: str, params: dict[str, Any]) -> Any:
        self.send({"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        while True:
            line = self.stdout.readline()
            if not line:
                return {"error": {"message": "nexus-mcp closed its output"}}
            message = json.loads(line)
            if message.get("id") == request_id:  # notifications (progress) are skipped
                return message


def main() -> None:
    calls = json.loads(sys.argv[1])
    server = subprocess.Popen(["nexus-mcp"], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    assert server.stdin is not None and server.stdout is not None
    session = Session(server.stdin, server.stdout)
    hello = session.ask(
        0,
        "initialize",
        {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "portal-client", "version": "1"}},
    )
    session.send({"jsonrpc": "2.0", "method": "notifications/initialized"})
    answers = [session.ask(i + 1, method, params) for i, (method, params) in enumerate(calls)]
    server.stdin.close()
    server.wait(timeout=10)
    print(json.dumps({"initialize": hello, "answers": answers}))


main()
