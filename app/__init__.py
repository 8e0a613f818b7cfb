"""AgentPhone webhook backend.

``from app import create_app`` loads Flask on first use only: the framework-free modules
(``app.webhook.signing``) import without it.
"""

__version__ = "0.2.0"

_FACTORY_NAMES = ("create_app", "log_dev_banner", "configure_logging")


def __getattr__(name: str):
    if name in _FACTORY_NAMES:
        from app import factory

        return getattr(factory, name)
    raise AttributeError(f"module 'app' has no attribute {name!r}")
