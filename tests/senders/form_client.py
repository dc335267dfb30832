"""Sends a JSON payload as a form, the way GitHub, Gitea and Plex do, with
python-requests building the body (data= for a urlencoded form, files= for
multipart/form-data), and signs it as each sender signs it: GitHub the raw
form body (X-Hub-Signature-256), Gitea the JSON in its payload field
(X-Gitea-Signature, services/webhook/deliver.go). Prints the status, then
the response body.

usage: form_client.py URL form|multipart token|github|gitea CREDENTIAL < payload.json
CREDENTIAL is the token itself for token, else the path of the secret file.
"""

import hashlib
import hmac
import sys

import requests

url, shape, auth, credential = sys.argv[1:5]
payload = sys.stdin.buffer.read().decode("utf-8")

if shape == "form":
    request = requests.Request("POST", url, data={"payload": payload})
else:
    # Plex: the JSON in a "payload" part, a JPEG thumbnail in another.
    request = requests.Request(
        "POST",
        url,
        files={
            "payload": (None, payload, "application/json"),
            "thumb": ("thumb.jpg", b"\xff\xd8\xff\xe0 not really a jpeg", "image/jpeg"),
        },
    )
prepared = request.prepare()
body = prepared.body if isinstance(prepared.body, bytes) else prepared.body.encode()

if auth == "token":
    prepared.headers["Authorization"] = "Bearer " + credential
else:
    secret = open(credential, "rb").read().strip()
    if auth == "github":
        mac = hmac.new(secret, body, hashlib.sha256).hexdigest()
        prepared.headers["X-Hub-Signature-256"] = "sha256=" + mac
        prepared.headers["X-GitHub-Event"] = "push"
    else:
        mac = hmac.new(secret, payload.encode(), hashlib.sha256).hexdigest()
        prepared.headers["X-Gitea-Signature"] = mac
        prepared.headers["X-Gitea-Event"] = "push"

response = requests.Session().send(prepared, timeout=10)
print(response.status_code)
sys.stdout.write(response.text)
