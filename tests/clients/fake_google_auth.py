"""Local stand-ins for what workload identity federation from AWS talks to, for tests that
need no cloud: the ECS container credentials endpoint, Google's STS token exchange and the
IAM credentials generateAccessToken (impersonation) endpoint, on one port.

The STS stand-in checks the subject token as Google does in substance: a GetCallerIdentity
request signed with AWS Signature V4 by the ECS keys, carrying the audience and the session
token. Also a GCE metadata server's token endpoint (GCE_METADATA_HOST) and Google's OAuth token
endpoint for service-account JWTs (the P12 path), checking the RS256 signature. Prints `listening on 127.0.0.1:PORT`; GET /_log answers what each endpoint received.

Usage: fake_google_auth.py [--sts-failures N] [--expires-in SECONDS] [--impersonation-failures N]
                           [--service-account-key JSON_KEY]
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import sys
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding

ACCESS_KEY = "AKIDECSTASKROLE"
SECRET_KEY = "ecs-secret-key"
SESSION_TOKEN = "ecs-session-token"
ECS_AUTHORIZATION = "ecs-agent-token"
SCOPE = "https://www.googleapis.com/auth/cloud-platform"

lock = threading.Lock()
log = {"ecs": [], "sts": [], "iam": [], "errors": []}
counters = {"sts": 0, "iam": 0}


def sign(key, text):
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def check_subject_token(token, audience):
    """None when `token` is a GetCallerIdentity request signed with the ECS keys, else why not."""
    request = json.loads(urllib.parse.unquote_plus(token))
    if request.get("method") != "POST":
        return "method is not POST"
    url = urllib.parse.urlsplit(request["url"])
    query = dict(urllib.parse.parse_qsl(url.query))
    if query.get("Action") != "GetCallerIdentity":
        return "not GetCallerIdentity: %s" % request["url"]
    headers = {h["key"].lower(): h["value"] for h in request["headers"]}
    if headers.get("x-goog-cloud-target-resource") != audience:
        return "x-goog-cloud-target-resource is not the audience"
    if headers.get("x-amz-security-token") != SESSION_TOKEN:
        return "no session token from the ECS endpoint"
    authorization = headers.pop("authorization", "")
    prefix = "AWS4-HMAC-SHA256 Credential=%s/" % ACCESS_KEY
    if not authorization.startswith(prefix):
        return "not signed with the ECS access key: %s" % authorization.split(",")[0]
    scope_part, signed_part, signature_part = [p.strip() for p in authorization[len("AWS4-HMAC-SHA256 "):].split(",")]
    scope = scope_part.split("=", 1)[1].split("/", 1)[1]
    date, region, service, _ = scope.split("/")
    signed = signed_part.split("=", 1)[1]
    canonical_query = urllib.parse.urlencode(sorted(urllib.parse.parse_qsl(url.query)))
    canonical_headers = "".join("%s:%s\n" % (k, headers[k].strip()) for k in signed.split(";"))
    canonical = "\n".join(["POST", "/", canonical_query, canonical_headers, signed,
                           hashlib.sha256(request.get("body", "").encode()).hexdigest()])
    to_sign = "\n".join(["AWS4-HMAC-SHA256", headers["x-amz-date"], scope,
                         hashlib.sha256(canonical.encode()).hexdigest()])
    key = sign(("AWS4" + SECRET_KEY).encode(), date)
    for part in (region, service, "aws4_request"):
        key = sign(key, part)
    expected = hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()
    if signature_part.split("=", 1)[1] != expected:
        return "SigV4 signature does not match"
    if url.hostname != "sts.%s.amazonaws.com" % region:
        return "region %s does not match the URL %s" % (region, url.hostname)
    return None


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def body(self):
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length).decode()

    def do_GET(self):
        if self.path == "/_log":
            with lock:
                return self.answer(200, log)
        if self.path == "/ecs/credentials":
            with lock:
                log["ecs"].append({"authorization": self.headers.get("Authorization")})
            if self.headers.get("Authorization") != ECS_AUTHORIZATION:
                return self.answer(401, {"message": "missing the ECS agent token"})
            expiration = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(hours=1)
            return self.answer(200, {
                "RoleArn": "arn:aws:iam::123456789012:role/bqforward-task",
                "AccessKeyId": ACCESS_KEY, "SecretAccessKey": SECRET_KEY, "Token": SESSION_TOKEN,
                "Expiration": expiration.strftime("%Y-%m-%dT%H:%M:%SZ")})
        if self.path.startswith("/computeMetadata/v1/instance/service-accounts/default/token"):
            with lock:
                counters["mds"] = counters.get("mds", 0) + 1
                n = counters["mds"]
                log.setdefault("mds", []).append({"flavor": self.headers.get("Metadata-Flavor"),
                                                  "path": self.path})
            if self.headers.get("Metadata-Flavor") != "Google":
                return self.answer(403, {"error": "Metadata-Flavor: Google missing"})
            return self.answer(200, {"access_token": "mds-token-%d" % n,
                                     "expires_in": args.expires_in, "token_type": "Bearer"})
        self.answer(404, {"error": "not found: " + self.path})

    def do_POST(self):
        if self.path == "/oauth2/token":
            return self.oauth(dict(urllib.parse.parse_qsl(self.body())))
        if self.path == "/v1/token":
            return self.sts(dict(urllib.parse.parse_qsl(self.body())))
        if self.path.endswith(":generateAccessToken"):
            return self.iam(json.loads(self.body() or "{}"))
        self.answer(404, {"error": "not found: " + self.path})

    def sts(self, form):
        with lock:
            counters["sts"] += 1
            n = counters["sts"]
            log["sts"].append({k: v for k, v in form.items() if k != "subject_token"})
        if n <= args.sts_failures:
            return self.answer(503, {"error": "temporarily_unavailable", "error_description": "fake STS failure %d" % n})
        problems = []
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:token-exchange":
            problems.append("grant_type")
        if form.get("subject_token_type") != "urn:ietf:params:aws:token-type:aws4_request":
            problems.append("subject_token_type")
        why = check_subject_token(form.get("subject_token", ""), form.get("audience"))
        if why:
            problems.append(why)
        if problems:
            with lock:
                log["errors"].append("sts: " + "; ".join(problems))
            return self.answer(400, {"error": "invalid_grant", "error_description": "; ".join(problems)})
        self.answer(200, {"access_token": "sts-token-%d" % n, "issued_token_type":
                          "urn:ietf:params:oauth:token-type:access_token",
                          "token_type": "Bearer", "expires_in": args.expires_in})

    def oauth(self, form):
        """Google's OAuth token endpoint for a service account's JWT (RFC 7523), as P12 keys use
        it: the assertion must be signed by --service-account-key's key."""
        with lock:
            counters["oauth"] = counters.get("oauth", 0) + 1
            n = counters["oauth"]
        problems = []
        claims = {}
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            problems.append("grant_type")
        try:
            header_b64, claims_b64, signature_b64 = form.get("assertion", "").split(".")
            pad = lambda text: text + "=" * (-len(text) % 4)
            header = json.loads(base64.urlsafe_b64decode(pad(header_b64)))
            claims = json.loads(base64.urlsafe_b64decode(pad(claims_b64)))
            if header.get("alg") != "RS256":
                problems.append("alg is not RS256")
            key = serialization.load_pem_private_key(
                json.load(open(args.service_account_key))["private_key"].encode(), None)
            key.public_key().verify(base64.urlsafe_b64decode(pad(signature_b64)),
                                    (header_b64 + "." + claims_b64).encode(),
                                    padding.PKCS1v15(), hashes.SHA256())
        except Exception as e:  # noqa: BLE001 - any flaw in the assertion is the client's
            problems.append("assertion: %r" % e)
        with lock:
            log.setdefault("oauth", []).append(claims)
            if problems:
                log["errors"].append("oauth: " + "; ".join(problems))
        if problems:
            return self.answer(400, {"error": "invalid_grant", "error_description": "; ".join(problems)})
        self.answer(200, {"access_token": "oauth-token-%d" % n, "token_type": "Bearer",
                          "expires_in": args.expires_in})

    def iam(self, body):
        with lock:
            counters["iam"] += 1
            n = counters["iam"]
            log["iam"].append({"authorization": self.headers.get("Authorization"), "path": self.path,
                               "scope": body.get("scope")})
        if n <= args.impersonation_failures:
            return self.answer(503, {"error": {"code": 503, "message": "fake IAM failure",
                                               "status": "UNAVAILABLE"}})
        if not (self.headers.get("Authorization") or "").startswith("Bearer sts-token-"):
            return self.answer(401, {"error": {"code": 401, "message": "no STS token",
                                               "status": "UNAUTHENTICATED"}})
        expire = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(seconds=args.expires_in)
        self.answer(200, {"accessToken": "sa-token-%d" % n,
                          "expireTime": expire.strftime("%Y-%m-%dT%H:%M:%SZ")})


parser = argparse.ArgumentParser()
parser.add_argument("--sts-failures", type=int, default=0)
parser.add_argument("--impersonation-failures", type=int, default=0)
parser.add_argument("--expires-in", type=int, default=3600)
parser.add_argument("--service-account-key", help="JSON key whose public half checks OAuth JWTs")
args = parser.parse_args()
server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("listening on 127.0.0.1:%d" % server.server_address[1], flush=True)
server.serve_forever()
