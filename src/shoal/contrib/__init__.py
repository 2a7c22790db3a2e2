"""Integrations with other libraries, each importable only when that library is installed.

``shoal.contrib.django``: a Django cache backend (``pip install shoal[django]``).
``shoal.contrib.prometheus``: a prometheus_client collector (``pip install shoal[prometheus]``).
"""
