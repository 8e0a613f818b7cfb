"""``app.webhook.signing`` and ``app.webhook.events`` are framework-free: each imports alone,
loading no Flask, no Werkzeug and no other module of the app."""

import json
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parent.parent
FRAMEWORKS = ("flask", "werkzeug")


def loaded_after_import(module):
    """The names in ``sys.modules`` of a fresh interpreter that imported ``module``."""
    code = f"import json, sys, {module}; print(json.dumps(sorted(sys.modules)))"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, check=True, timeout=60)
    return json.loads(result.stdout)


@pytest.mark.parametrize("module", ["app.webhook.signing", "app.webhook.events"])
def test_imports_without_flask_or_the_rest_of_the_app(module):
    loaded = loaded_after_import(module)
    assert [name for name in loaded if name.split(".")[0] in FRAMEWORKS] == []
    assert [name for name in loaded if name.split(".")[0] == "app"] == sorted(
        ["app", "app.webhook", module])


def test_the_blueprint_does_load_flask_and_the_app():
    # The control: the same check sees what the views import.
    loaded = loaded_after_import("app.webhook.views")
    assert {"flask", "werkzeug", "app.registry", "app.jobs.handlers"} <= set(loaded)
