"""`/status`, the live status page for the person who runs ccproxy: `view` (its
data, built from `ccproxy.observe.watch` and the dispatcher's health), `render`
(its HTML), `session` (the admins' session cookies), `page` (what its routes
answer, and its viewers); `assets/` is its script, style and icon (package data).
"""
