"""`python -m tests.doubles.slack_api`: serve one double until SIGTERM (how SlackDoubleProcess starts it)."""

from __future__ import annotations

import argparse
import json

from tests.doubles import slack_api
from tests.doubles.slack_api.process import serve_forever
from tests.doubles.slack_api.workspace import DEFAULT_BOT_TOKEN


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.doubles.slack_api", description=slack_api.__doc__)
    parser.add_argument("--port", type=int, default=0, help="0 picks a free port (printed after READY)")
    parser.add_argument("--bot-token", default=DEFAULT_BOT_TOKEN)
    parser.add_argument(
        "--config", default="{}", help="JSON: users, usergroups, channels, scopes, latency, ..."
    )
    parser.add_argument("--exit-on-stdin-eof", action="store_true", help="stop when the parent goes away")
    args = parser.parse_args(argv)
    serve_forever(
        args.port, args.bot_token, config=json.loads(args.config), exit_on_stdin_eof=args.exit_on_stdin_eof
    )


if __name__ == "__main__":
    main()
