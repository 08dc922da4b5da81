"""gunicorn's access log line, built directly for its default format (omlweb/gunicorn_conf.py)."""

from __future__ import annotations

import base64
import datetime
import importlib
import io
import logging

import pytest
from gunicorn.config import Config
from gunicorn.glogging import Logger

from omlweb.gunicorn_conf import AccessLogger


class Response:
    def __init__(self, status="200 OK", sent=40, headers=()):
        self.status = status
        self.sent = sent
        self.headers = list(headers)


class Request:
    def __init__(self, headers=()):
        self.headers = list(headers)


def _environ(**extra) -> dict:
    environ = {
        "REQUEST_METHOD": "POST",
        "RAW_URI": "/oml/api/py-scripts/v1/do-eval/bench_trivial",
        "PATH_INFO": "/oml/api/py-scripts/v1/do-eval/bench_trivial",
        "QUERY_STRING": "",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": "http",
    }
    environ.update(extra)
    return environ


def _lines(logger_class, response, request, environ, access_log_format=None) -> list[str]:
    cfg = Config()
    cfg.set("accesslog", "-")
    if access_log_format is not None:
        cfg.set("access_log_format", access_log_format)
    log = logger_class(cfg)
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    log.access_log.handlers = [handler]
    # Both within one second: the time stamp is part of the line.
    log.now = lambda: "[30/Nov/2026:14:44:12 +0000]"
    log.access(response, request, environ, datetime.timedelta(microseconds=5123))
    return stream.getvalue().splitlines()


BASIC = "Basic " + base64.b64encode(b"alice:secret").decode()
CASES = [
    pytest.param(Response(), Request(), _environ(), id="plain"),
    pytest.param(
        Response(status="404 Not Found", sent=None, headers=[("Content-Type", "application/json")]),
        Request([("USER-AGENT", 'py "quoted"')]),
        _environ(HTTP_USER_AGENT='py "quoted"', HTTP_REFERER='http://x/"a"', RAW_URI='/oml/%25s?q="1"%d'),
        id="quotes-percent-no-body",
    ),
    pytest.param(Response(status=201, sent=0), Request(), _environ(HTTP_AUTHORIZATION=BASIC), id="basic-auth-user"),
    pytest.param(Response(), Request(), _environ(REMOTE_ADDR="::1", HTTP_AUTHORIZATION="Bearer abc"), id="bearer"),
]


@pytest.mark.parametrize(("response", "request_", "environ"), CASES)
def test_the_default_line_is_gunicorns_own_byte_for_byte(response, request_, environ):
    """Every field of gunicorn's default format as gunicorn writes it: quotes escaped, '%' kept, '-' for none."""
    ours = _lines(AccessLogger, response, request_, environ)
    assert ours == _lines(Logger, response, request_, environ)
    assert len(ours) == 1


def test_a_custom_format_goes_through_gunicorns_own_atoms():
    """A format naming other atoms (a header, the duration, the pid) is filled as gunicorn fills it."""
    layout = '%(h)s %({content-type}o)s %({user-agent}i)s %(D)s %(p)s "%(r)s"'
    response = Response(headers=[("Content-Type", "application/json")])
    request = Request([("USER-AGENT", "curl")])
    ours = _lines(AccessLogger, response, request, _environ(), access_log_format=layout)
    assert ours == _lines(Logger, response, request, _environ(), access_log_format=layout)
    assert "application/json curl 5123" in ours[0]


def test_no_line_when_the_access_log_is_off():
    """Without --access-logfile (or a log config) nothing is written, as with gunicorn's logger."""
    cfg = Config()
    log = AccessLogger(cfg)
    assert not log.access_log_enabled
    stream = io.StringIO()
    log.access_log.handlers = [logging.StreamHandler(stream)]
    log.access(Response(), Request(), _environ(), datetime.timedelta(0))
    assert stream.getvalue() == ""


def test_serve_configures_gunicorn_with_it():
    """`--config python:omlweb.gunicorn_conf` (what manage.py serve passes) makes it gunicorn's logger class."""
    from gunicorn.app.base import Application

    class App(Application):
        def init(self, parser, opts, args):
            return None

        def load(self):
            return None

    app = App.__new__(App)
    app.cfg = Config()
    app.load_config_from_module_name_or_filename("python:omlweb.gunicorn_conf")
    # The module as gunicorn imports it: another test may have reloaded it since this file's import.
    assert app.cfg.logger_class is importlib.import_module("omlweb.gunicorn_conf").AccessLogger
