"""Verifies one webhook with the `standardwebhooks` package, independently of Verify.

Reads {"secret", "headers", "body"} as JSON on standard input; exits 0 when the
signature is valid, 1 (with the reason on standard error) when it is not, 2 when the
package is missing.
"""
import json
import sys

try:
    from standardwebhooks.webhooks import Webhook
except ImportError as error:
    print(f"standardwebhooks is not installed ({error}); scripts/test installs it", file=sys.stderr)
    sys.exit(2)

given = json.load(sys.stdin)
try:
    Webhook(given["secret"]).verify(given["body"], given["headers"])
except Exception as error:  # the package raises its own WebhookVerificationError
    print(f"verification failed: {error!r}", file=sys.stderr)
    sys.exit(1)
