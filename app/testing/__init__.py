"""Test an agent the way a caller meets it: conversations over the real webhook path.

``Call`` drives a webhook like the platform does; ``LocalServer`` serves the app in this
process with the agent's tool calls observed; scenario files (``scenario``) describe whole
conversations with expectations, ``runner`` plays them and ``report`` prints the outcome.
The ``phone`` pytest fixture (``pytest_plugin``) brings the same to a project's own tests.
"""

from app.testing.call import Answer, Call, Line, ToolUse
from app.testing.local import LocalServer
from app.testing.scenario import Scenario, ScenarioError, discover, load

__all__ = ["Answer", "Call", "Line", "LocalServer", "Scenario", "ScenarioError", "ToolUse",
           "discover", "load"]
