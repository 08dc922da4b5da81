from __future__ import annotations

import pytest

from tests.notifications.receivers import SMTPServer, WebhookReceiver


@pytest.fixture
def smtp_server():
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def receiver():
    server = WebhookReceiver().start()
    yield server
    server.stop()
