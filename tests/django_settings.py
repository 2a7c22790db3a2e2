"""Django settings, URLs and views for tests/test_django.py: shoal as the cache backend, no database.

It is both ``DJANGO_SETTINGS_MODULE`` and ``ROOT_URLCONF``. Every alias names the same
LOCATION, so the test process runs one shoal Node (member A) hosting the caches
"c" (shared with member processes from tests/support/member.py) and "unit".
"""

from __future__ import annotations

from typing import Any

from django.core.cache import caches
from django.http import HttpRequest, JsonResponse
from django.urls import path

SECRET_KEY = "tests-only-not-a-secret"
DEBUG = False
ALLOWED_HOSTS = ["testserver"]
INSTALLED_APPS: list[str] = []
MIDDLEWARE: list[str] = []
DATABASES: dict[str, Any] = {}
ROOT_URLCONF = "tests.django_settings"
USE_TZ = True

SHOAL_SECRET = "shoal-test-secret"  # what tests/support/member.py's members use by default
LOCATION = "127.0.0.1:0"  # port 0: any free port; the tests read the real one from the node
NODE_OPTIONS = {"boot_wait": 0.5, "anti_entropy_interval": 1.0, "heartbeat_interval": 0.2, "failure_timeout": 2.0}
SHOAL = {"secret": SHOAL_SECRET, "node_options": NODE_OPTIONS}

CACHES = {
    "default": {
        "BACKEND": "shoal.contrib.django.ShoalCache",
        "LOCATION": LOCATION,
        "TIMEOUT": 300,
        "OPTIONS": {**SHOAL, "cache": "c"},
    },
    "unit": {
        "BACKEND": "shoal.contrib.django.ShoalCache",
        "LOCATION": LOCATION,
        "TIMEOUT": 60,
        "OPTIONS": {**SHOAL, "cache": "unit", "max_entries": 10_000},
    },
    # The same shoal cache as "unit", under another prefix and version and with no default expiry.
    "versioned": {
        "BACKEND": "shoal.contrib.django.ShoalCache",
        "LOCATION": LOCATION,
        "TIMEOUT": None,
        "KEY_PREFIX": "app",
        "VERSION": 2,
        "OPTIONS": {**SHOAL, "cache": "unit", "max_entries": 10_000},
    },
}


def remember(request: HttpRequest, key: str) -> JsonResponse:
    """POST stores the form's ``value`` under key; GET reads it back (null when absent)."""
    cache = caches["default"]
    if request.method == "POST":
        cache.set(key, request.POST["value"])
        return JsonResponse({"key": key, "stored": True})
    return JsonResponse({"key": key, "value": cache.get(key)})


def visits(request: HttpRequest, page: str) -> JsonResponse:
    """A visit counter: get_or_set starts it, incr counts (atomic per process, not per cluster)."""
    cache = caches["default"]
    cache.get_or_set(f"visits:{page}", 0)
    return JsonResponse({"page": page, "visits": cache.incr(f"visits:{page}")})


urlpatterns = [
    path("remember/<str:key>", remember),
    path("visits/<str:page>", visits),
]
