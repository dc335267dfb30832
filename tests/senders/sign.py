"""Signs and checks webhook deliveries with each sender's own library, for
tests/senders.rs: what sockhook must accept is made by the code the senders
publish, not by sockhook.

    sign.py sign SCHEME KEYFILE TIMESTAMP ID < BODY     header lines, one per line
    sign.py verify SCHEME KEYFILE HEADERFILE < BODY     exit 0 if the library accepts
    sign.py public SCHEME KEYFILE                        the public key of a private key

KEYFILE holds the secret as the sender shows it (Stripe's whsec_..., Slack's
signing secret, Standard Webhooks' whsec_...) or, for discord and v1a, the
Ed25519 private key: the 32-byte seed in hex.
"""

import base64
import datetime
import hashlib
import hmac
import sys


def read_key(path):
    with open(path) as f:
        return f.read().strip()


def ed25519(seed_hex):
    import nacl.signing

    return nacl.signing.SigningKey(bytes.fromhex(seed_hex))


def when(timestamp):
    return datetime.datetime.fromtimestamp(int(timestamp), tz=datetime.timezone.utc)


def sign(scheme, key, timestamp, msg_id, body):
    if scheme == "stripe":
        import stripe

        # Stripe's own test helper (stripe-python, WebhookSignature).
        value = stripe.WebhookSignature.generate_signature_header(
            body.decode(), key, timestamp=int(timestamp)
        )
        return [f"Stripe-Signature: {value}"]
    if scheme == "slack":
        from slack_sdk.signature import SignatureVerifier

        signature = SignatureVerifier(key).generate_signature(timestamp=timestamp, body=body)
        return [f"X-Slack-Request-Timestamp: {timestamp}", f"X-Slack-Signature: {signature}"]
    if scheme == "standard-webhooks":
        import standardwebhooks

        signature = standardwebhooks.Webhook(key).sign(msg_id, when(timestamp), body)
        return [
            f"webhook-id: {msg_id}",
            f"webhook-timestamp: {timestamp}",
            f"webhook-signature: {signature}",
        ]
    if scheme == "svix":
        import svix.webhooks

        signature = svix.webhooks.Webhook(key).sign(msg_id, when(timestamp), body.decode())
        return [
            f"svix-id: {msg_id}",
            f"svix-timestamp: {timestamp}",
            f"svix-signature: {signature}",
        ]
    if scheme == "v1a":
        # Standard Webhooks 1.0, "Asymmetric signatures": no library signs
        # v1a, so PyNaCl (libsodium) signs what the specification says.
        signed = ed25519(key).sign(f"{msg_id}.{timestamp}.".encode() + body).signature
        return [
            f"webhook-id: {msg_id}",
            f"webhook-timestamp: {timestamp}",
            f"webhook-signature: v1a,{base64.b64encode(signed).decode()}",
        ]
    if scheme == "discord":
        # As Discord's documentation verifies it, with PyNaCl.
        signed = ed25519(key).sign(timestamp.encode() + body).signature
        return [f"X-Signature-Ed25519: {signed.hex()}", f"X-Signature-Timestamp: {timestamp}"]
    mac = hmac.new(key.encode(), body, hashlib.sha256).digest()
    if scheme == "shopify":
        # Shopify's documented Python example: base64 of the HMAC-SHA256 digest.
        return [
            f"X-Shopify-Hmac-Sha256: {base64.b64encode(mac).decode()}",
            f"X-Shopify-Topic: orders/create",
            f"X-Shopify-Webhook-Id: {msg_id}",
        ]
    if scheme == "linear":
        # Linear's documented example: hex HMAC-SHA256 of the raw body.
        return [
            f"Linear-Signature: {mac.hex()}",
            "Linear-Event: Issue",
            f"Linear-Delivery: {msg_id}",
        ]
    if scheme == "sentry":
        # Sentry's documented example: hex HMAC-SHA256 of the body.
        return [
            f"Sentry-Hook-Signature: {mac.hex()}",
            "Sentry-Hook-Resource: issue",
            f"Request-ID: {msg_id}",
        ]
    raise SystemExit(f"sign.py: unknown scheme {scheme}")


def verify(scheme, key, headers, body):
    """Raises unless the sender's library accepts the delivery."""
    if scheme == "stripe":
        import stripe

        stripe.WebhookSignature.verify_header(body, headers["stripe-signature"], key, 300)
    elif scheme == "slack":
        from slack_sdk.signature import SignatureVerifier

        if not SignatureVerifier(key).is_valid_request(body, headers):
            raise ValueError("slack_sdk: not valid")
    elif scheme == "standard-webhooks":
        import standardwebhooks

        standardwebhooks.Webhook(key).verify(body, headers, json_parse=False)
    elif scheme == "discord":
        import nacl.signing

        verify_key = nacl.signing.VerifyKey(bytes.fromhex(key))
        timestamp = headers["x-signature-timestamp"].encode()
        verify_key.verify(timestamp + body, bytes.fromhex(headers["x-signature-ed25519"]))
    elif scheme == "v1a":
        import nacl.signing

        verify_key = nacl.signing.VerifyKey(base64.b64decode(key.removeprefix("whpk_")))
        signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
        entries = headers["webhook-signature"].split()
        signatures = [base64.b64decode(e[4:]) for e in entries if e.startswith("v1a,")]
        if not signatures:
            raise ValueError("no v1a signature")
        verify_key.verify(signed, signatures[0])
    else:
        raise SystemExit(f"sign.py: cannot verify {scheme}")


def main():
    mode, scheme, keyfile = sys.argv[1:4]
    key = read_key(keyfile)
    if mode == "public":
        public = ed25519(key).verify_key.encode()
        if scheme == "discord":
            print(public.hex())
        else:
            print("whpk_" + base64.b64encode(public).decode())
        return
    body = sys.stdin.buffer.read()
    if mode == "sign":
        timestamp, msg_id = sys.argv[4:6]
        print("\n".join(sign(scheme, key, timestamp, msg_id, body)))
    elif mode == "verify":
        with open(sys.argv[4]) as f:
            lines = [line.split(":", 1) for line in f.read().splitlines() if line]
        headers = {name.strip().lower(): value.strip() for name, value in lines}
        try:
            verify(scheme, key, headers, body)
        except Exception as e:  # the library's own exception, whatever its type
            print(f"rejected: {type(e).__name__}: {e}")
            sys.exit(1)
        print("accepted")


main()
