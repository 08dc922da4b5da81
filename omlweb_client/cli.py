"""The `omlweb` command: log in, push a script, run it (sync or as a job), fetch results, list runs.

    omlweb login --url http://127.0.0.1:8000 --username alice     # password: prompt or OMLWEB_PASSWORD
    omlweb push model.py [--name NAME] [--description TEXT]
    omlweb run NAME [-p key=value ...] [--parameters JSON] [--graphics] [--async] [--service HIGH] [--out DIR]
    omlweb result JOB_ID [--graphics] [--out DIR]
    omlweb runs [--limit N]

Credentials are kept in $OMLWEB_CONFIG (default ~/.config/omlweb/credentials.json, mode 0600).
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import sys
import time
from pathlib import Path

from omlweb_client.api import Client, Credentials, OmlError, RunResult


def config_path() -> Path:
    default = Path.home() / ".config" / "omlweb" / "credentials.json"
    return Path(os.environ.get("OMLWEB_CONFIG", default))


def save_credentials(credentials: Credentials) -> None:
    path = config_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(credentials.to_json())


def logged_in_client() -> Client:
    path = config_path()
    if not path.exists():
        raise OmlError(401, "Not logged in: run `omlweb login --url URL --username NAME` first.")
    credentials = Credentials.from_json(path.read_text())
    client = Client(credentials.url, credentials)
    return client


def parse_parameters(pairs: list[str], raw: str | None) -> dict:
    parameters = json.loads(raw) if raw else {}
    if not isinstance(parameters, dict):
        raise SystemExit("--parameters must be a JSON object")
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep:
            raise SystemExit(f"-p {pair!r}: use key=value")
        try:
            parameters[key] = json.loads(value)
        except ValueError:
            parameters[key] = value  # a bare word is a string
    return parameters


def report(result: RunResult, *, out: Path | None, stem: str) -> None:
    print(json.dumps(result.value, indent=2, default=str))
    if result.comments:
        print(f"comments: {result.comments}", file=sys.stderr)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / f"{stem}.json").write_text(json.dumps(result.value, indent=2, default=str))
        for path in result.save_figures(out, stem):
            print(f"figure: {path}", file=sys.stderr)
        print(f"result: {out / f'{stem}.json'}", file=sys.stderr)


def progress_line(status: dict) -> None:
    # One line rewritten in place on a terminal; plain lines in a log.
    line = f"{status.get('status', '?')}, {status.get('elapsedTime', '')} elapsed"
    if sys.stderr.isatty():
        print(f"\r{line}", end="", file=sys.stderr, flush=True)
    else:
        print(line, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="omlweb", description="Client of omlweb's OML4Py REST API.")
    commands = parser.add_subparsers(dest="command", required=True)
    login = commands.add_parser("login", help="Get a token and keep it.")
    login.add_argument("--url", required=True, help="The service, e.g. http://127.0.0.1:8000")
    login.add_argument("--username", required=True)
    push = commands.add_parser("push", help="Store a .py file as a script (replacing one of that name).")
    push.add_argument("file", type=Path)
    push.add_argument("--name", help="Default: the file's stem, which must name its function.")
    push.add_argument("--description", default="")
    run = commands.add_parser("run", help="Run a script, sync or as an async job.")
    run.add_argument("name")
    run.add_argument("-p", "--param", action="append", default=[], metavar="KEY=VALUE")
    run.add_argument("--parameters", help="A JSON object of keyword arguments.")
    run.add_argument("--graphics", action="store_true", help="Capture the figures it draws.")
    run.add_argument("--async", dest="is_async", action="store_true", help="Submit a job and follow it.")
    run.add_argument("--service", choices=["LOW", "MEDIUM", "HIGH"])
    run.add_argument("--env", help="The environment to run in.")
    run.add_argument("--out", type=Path, help="Write the result (and figures as PNG) into this folder.")
    result = commands.add_parser("result", help="Fetch a finished job's result.")
    result.add_argument("job_id")
    result.add_argument("--graphics", action="store_true")
    result.add_argument("--out", type=Path)
    runs = commands.add_parser("runs", help="List your async jobs, newest first.")
    runs.add_argument("--limit", type=int, default=20)
    args = parser.parse_args(argv)
    try:
        return _dispatch(args)
    except OmlError as error:
        print(f"omlweb: {error}", file=sys.stderr)
        return 1


def _dispatch(args: argparse.Namespace) -> int:
    if args.command == "login":
        password = os.environ.get("OMLWEB_PASSWORD") or getpass.getpass(f"Password of {args.username}: ")
        save_credentials(Client(args.url).login(args.username, password))
        print(f"Logged in to {args.url} as {args.username}.")
        return 0
    client = logged_in_client()
    if args.command == "push":
        name = args.name or args.file.stem
        row = client.push_script(name, args.file.read_text(), description=args.description)
        print(f"Pushed {row['OWNER']}/{row['NAME']}, version {row['VERSION']}.")
    elif args.command == "run":
        parameters = parse_parameters(args.param, args.parameters)
        options = {"service": args.service, "envName": args.env}
        if not args.is_async:
            outcome = client.run(args.name, parameters=parameters, graphics=args.graphics, **options)
            report(outcome, out=args.out, stem=args.name)
        else:
            job_url = client.submit(args.name, parameters=parameters, graphics=args.graphics, **options)
            job_id = job_url.rstrip("/").rsplit("/", 1)[-1]
            print(f"job {job_id}", file=sys.stderr)
            started = time.monotonic()
            result_url = client.wait(job_url, progress=progress_line)
            print(f"\nfinished in {time.monotonic() - started:.0f} s", file=sys.stderr)
            report(client.result(result_url, graphics=args.graphics), out=args.out, stem=job_id)
    elif args.command == "result":
        result_url = client.wait(client.job_url(args.job_id))
        report(client.result(result_url, graphics=args.graphics), out=args.out, stem=args.job_id)
    elif args.command == "runs":
        for job in client.jobs(limit=args.limit):
            print(
                f"{job['job_id']}  {job['createdDate']}  {job['state']:<10} {job['elapsedTime']}  {job['scriptName']}"
            )
    if client.credentials is not None:
        save_credentials(client.credentials)  # a refreshed token is kept
    return 0


if __name__ == "__main__":
    sys.exit(main())
