"""The admin web UI (`/admin`) and its JSON API (`/api`), on with `server.admin_token` (SPEC §3.3).

    admin/activity.py   in-memory, bounded: recent Criteo calls and ingest samples (hot-path appends)
    admin/recorder.py   writes them and per-minute counters to the store every few seconds
    admin/views.py      what each page and route shows, built from the store (pydantic models)
    admin/api.py        the FastAPI sub-application serving `/api/*` and `/api/openapi.json`
    admin/pages.py      the server-rendered pages (Jinja2, htmx), the login form, static assets
    admin/auth.py       the token, the session cookie and its CSRF token
    admin/masking.py    identifiers as hash prefixes, never raw values

This module stays import-light: `segcrit.metrics` imports `admin.activity` for every process.
"""
