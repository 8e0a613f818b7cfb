"""Client for the AgentPhone REST API (contract 4): calls, messages, webhooks, streams.

    from app.agentphone import client_from_app
    client = client_from_app(current_app)
    client.send_message(agent_id="agt_...", to_number="+14155551234", body="Hi!")
"""

from app.agentphone.client import (
    DEFAULT_BASE_URL,
    AgentPhoneClient,
    client_from_app,
    from_config,
)
from app.agentphone.errors import (
    AgentPhoneError,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    MissingAPIKeyError,
    NotFoundError,
    RateLimitError,
    ServerError,
    StreamLimitError,
)
from app.agentphone.pagination import Page

__all__ = [
    "DEFAULT_BASE_URL",
    "APIConnectionError",
    "APITimeoutError",
    "AgentPhoneClient",
    "AgentPhoneError",
    "AuthenticationError",
    "BadRequestError",
    "MissingAPIKeyError",
    "NotFoundError",
    "Page",
    "RateLimitError",
    "ServerError",
    "StreamLimitError",
    "client_from_app",
    "from_config",
]
