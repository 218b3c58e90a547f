"""A vmpooler API v1 client written from vmpooler's API document (docs/API-v1.md of
puppetlabs/vmpooler), as vmfloaty and CI plugins use it, driving gantry's /api/v1 face.

Usage: vmpooler_client.py BASE_URL USER PASSWORD POOL
Every step asserts the shape the document shows; exits non-zero on the first difference.
"""
import base64
import json
import ssl
import sys
import time
import urllib.error
import urllib.request

base, user, password, pool = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
api = base.rstrip("/") + "/api/v1"
# The server's certificate is self-signed.
context = ssl.create_default_context()
context.check_hostname = False
context.verify_mode = ssl.CERT_NONE


def call(method, path, body=None, token=None, basic=False):
    """(status, JSON body). vmpooler's clients send JSON bodies as `curl -d` does: no JSON
    content type."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(api + path, data=data, method=method)
    if token:
        req.add_header("X-AUTH-TOKEN", token)
    if basic:
        pair = base64.b64encode(f"{user}:{password}".encode()).decode()
        req.add_header("Authorization", "Basic " + pair)
    try:
        with urllib.request.urlopen(req, context=context) as answer:
            return answer.status, json.loads(answer.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


# Token operations: POST /token with the user's password answers {"ok", "token"}.
status, made = call("POST", "/token", basic=True)
assert status == 200 and made["ok"] is True and isinstance(made["token"], str), made
token = made["token"]
status, tokens = call("GET", "/token", basic=True)
assert status == 200 and tokens["ok"] is True, tokens
assert any("created" in v for k, v in tokens.items() if k != "ok"), tokens

# GET /vm: the pools, a list of names.
status, pools = call("GET", "/vm")
assert status == 200 and pool in pools, pools

# POST /vm/<pool>: one VM, {"ok": true, "<pool>": {"hostname": "<name>"}}.
status, got = call("POST", f"/vm/{pool}", token=token)
assert status == 200 and got["ok"] is True, got
host = got[pool]["hostname"]
assert isinstance(host, str) and host, got

# GET /vm/<hostname>: template, lifetime (hours), running (hours), state, tags.
status, vm = call("GET", f"/vm/{host}")
assert status == 200 and vm["ok"] is True, vm
info = vm[host]
assert info["template"] == pool, info
assert info["lifetime"] == 12, info  # vmpooler's default lifetime
assert isinstance(info["running"], (int, float)) and info["running"] >= 0, info
assert info["state"] == "running", info

# PUT /vm/<hostname>: lifetime (hours, a string as the document sends it) and tags.
status, done = call("PUT", f"/vm/{host}", {"lifetime": "2"}, token=token)
assert status == 200 and done == {"ok": True}, done
status, done = call("PUT", f"/vm/{host}",
                    {"tags": {"department": "engineering", "user": "jdoe"}}, token=token)
assert status == 200 and done == {"ok": True}, done
info = call("GET", f"/vm/{host}")[1][host]
assert info["lifetime"] == 2, info
assert info["tags"] == {"department": "engineering", "user": "jdoe"}, info
# A bad lifetime is refused.
status, bad = call("PUT", f"/vm/{host}", {"lifetime": "soon"}, token=token)
assert status == 400 and bad["ok"] is False, bad

# POST /vm/<hostname>/disk/<size>: {"ok": true, "<host>": {"disk": "+8gb"}}, then GET shows it.
status, disk = call("POST", f"/vm/{host}/disk/8", token=token)
assert status == 200 and disk == {"ok": True, host: {"disk": "+8gb"}}, disk
for _ in range(100):
    info = call("GET", f"/vm/{host}")[1][host]
    if info.get("disk") == ["+8gb"]:
        break
    time.sleep(0.1)
assert info.get("disk") == ["+8gb"], info

# GET /status: capacity, queue, status.
status, st = call("GET", "/status")
assert status == 200, st
assert set(st["capacity"]) >= {"current", "total", "percent"}, st
assert set(st["queue"]) >= {"pending", "cloning", "booting", "ready", "running", "completed", "total"}, st
assert st["queue"]["running"] >= 1, st
assert isinstance(st["status"]["ok"], bool) and isinstance(st["status"]["message"], str), st

# GET /summary: boot, clone, tag, daily (today by default).
status, summary = call("GET", "/summary")
assert status == 200, summary
for part in ("boot", "clone"):
    assert set(summary[part]["duration"]) >= {"average", "min", "max", "total"}, summary
    assert set(summary[part]["count"]) >= {"average", "min", "max", "total"}, summary
assert summary["clone"]["count"]["total"] >= 1, summary
assert summary["tag"]["department"] == {"engineering": 1, "total": 1}, summary
assert len(summary["daily"]) == 1 and "date" in summary["daily"][0], summary
status, bad = call("GET", "/summary?from=yesterday")
assert status == 400, bad

# GET /token/<token>: the user, creation time and running VMs.
status, shown = call("GET", f"/token/{token}", basic=True)
assert status == 200 and shown["ok"] is True, shown
assert shown[token]["user"] == user and host in shown[token]["vms"]["running"], shown

# DELETE /vm/<hostname>: {"ok": true}; the VM is gone afterwards.
status, done = call("DELETE", f"/vm/{host}", token=token)
assert status == 200 and done == {"ok": True}, done
for _ in range(100):
    if call("GET", f"/vm/{host}")[0] == 404:
        break
    time.sleep(0.1)
assert call("GET", f"/vm/{host}")[0] == 404

# An unknown pool: 404 {"ok": false}.
status, none = call("POST", "/vm/no-such-pool", token=token)
assert status == 404 and none == {"ok": False}, none

# DELETE /token/<token>: the token no longer works.
status, done = call("DELETE", f"/token/{token}", basic=True)
assert status == 200 and done == {"ok": True}, done
status, _ = call("POST", f"/vm/{pool}", token=token)
assert status == 401, status
print("all steps passed")
