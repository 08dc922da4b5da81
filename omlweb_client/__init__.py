"""A client of omlweb's OML4Py REST API (`Client`) and the `omlweb` command (`cli.main`). No Django."""

from omlweb_client.api import Client, Credentials, OmlError, RunResult

__all__ = ["Client", "Credentials", "OmlError", "RunResult"]
