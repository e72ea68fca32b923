"""`python -m factloop`: a thin command line over the client, for shells and CI.

    python -m factloop --url URL --token TOKEN rounds
    python -m factloop ... import FILE.zip [--kind prompts] [--skip-bad] [--wait]
    python -m factloop ... start-round --policy tiny-base --kinds correct --limit 50
    python -m factloop ... open N | freeze N | train N [--method ddpo] [--set KEY=VALUE ...]
    python -m factloop ... job ID [--wait] | export FORMAT N [N ...] | download JOB FILE
    python -m factloop ... versions | deploy NAME [--reason TEXT] | quality N

The token may come from FACTLOOP_TOKEN instead. Prints JSON; exit 1 with the server's
reason when it refuses, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

from factloop.client import Client, FactLoopError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m factloop", description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000", help="the FactLoop server")
    parser.add_argument("--token", default=os.environ.get("FACTLOOP_TOKEN"), help="an admin's API token")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("rounds", help="every round with its progress")
    upload = commands.add_parser("import", help="upload a zip of prompts or labels to import as a job")
    upload.add_argument("file")
    upload.add_argument("--kind", default="prompts", choices=["prompts", "llava-rlhf", "rlhf-v"])
    upload.add_argument("--skip-bad", action="store_true", help="import the good rows, report the bad ones")
    upload.add_argument("--wait", action="store_true", help="until the import job has finished")
    start = commands.add_parser("start-round", help="start a round over the split's prompts")
    start.add_argument("--policy", required=True, help="a registered policy version")
    start.add_argument("--kinds", default="rank,correct", help="task kinds: rank, correct or both")
    start.add_argument("--limit", type=int, help="at most this many prompts")
    start.add_argument("--ai-labeller", default="", help='"policy", a registered version, or none')
    for name in ("open", "freeze", "quality"):
        commands.add_parser(name).add_argument("round", type=int)
    train = commands.add_parser("train", help="train a round as a job")
    train.add_argument("round", type=int)
    train.add_argument("--method", default="ddpo")
    train.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    job = commands.add_parser("job", help="a job's state")
    job.add_argument("id", type=int)
    job.add_argument("--wait", action="store_true", help="until it has finished")
    export = commands.add_parser("export", help="queue an export")
    export.add_argument("format", choices=["factloop", "trl", "llava-rlhf", "rlhf-v"])
    export.add_argument("rounds", type=int, nargs="+")
    download = commands.add_parser("download", help="save a finished export as a zip")
    download.add_argument("job", type=int)
    download.add_argument("file")
    commands.add_parser("versions", help="the registered model versions")
    deploy = commands.add_parser("deploy", help="serve a version (an earlier one rolls back)")
    deploy.add_argument("name")
    deploy.add_argument("--reason", default="")
    args = parser.parse_args(argv)
    if not args.token:
        parser.error("give --token or set FACTLOOP_TOKEN")
    if args.command == "import" and not os.path.isfile(args.file):
        parser.error(f"no file {args.file}")
    try:
        with Client(args.url, token=args.token) as client:
            result = run(client, args)
    except FactLoopError as error:
        print(f"factloop: {error}", file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


def run(client: Client, args: argparse.Namespace) -> Any:
    if args.command == "rounds":
        return client.rounds()
    if args.command == "start-round":
        kinds = [kind.strip() for kind in args.kinds.split(",") if kind.strip()]
        settings: dict[str, Any] = {"policy_version": args.policy, "task_kinds": kinds, "ai_labeller": args.ai_labeller}
        if args.limit:
            settings["limit"] = args.limit
        return client.start_round(**settings)
    if args.command == "import":
        job = client.import_archive(args.file, args.kind, skip_bad=args.skip_bad)
        return client.wait_job(job["id"]) if args.wait else job
    if args.command == "open":
        return client.open_round(args.round)
    if args.command == "freeze":
        return client.freeze_round(args.round)
    if args.command == "quality":
        return client.quality(args.round)
    if args.command == "train":
        return client.train(args.round, method=args.method, overrides=args.set)
    if args.command == "job":
        return client.wait_job(args.id) if args.wait else client.job(args.id)
    if args.command == "export":
        return client.export(args.format, args.rounds)
    if args.command == "download":
        return {"saved": str(client.download(args.job, args.file))}
    if args.command == "versions":
        return client.versions()
    return client.deploy(args.name, reason=args.reason)


if __name__ == "__main__":
    sys.exit(main())
