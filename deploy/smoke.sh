#!/usr/bin/env bash
# Start the serving image and check it as a deployment would: ready, refuses requests without
# a token, analyses an image with one, counts it in /metrics, passes its health check.
#   deploy/smoke.sh [IMAGE]
set -euo pipefail
cd "$(dirname "$0")/.."
image="${1:-localhost/busdx:latest}"
export CONTAINERS_CONF="${CONTAINERS_CONF:-$PWD/deploy/containers.conf}"
port="${SMOKE_PORT:-18765}"
token="smoke-$(python3 -c 'import secrets; print(secrets.token_urlsafe(24))')"
name="busdx-smoke-$$"
image_file="tests/fixtures/busbra/Images/bus_0360-l.png"
# no systemd timer here: the health check is run by hand below
podman run -d --health-interval=disable --name "$name" -e BUSDX_TOKENS="smoke:$token" -e BUSDX_PORT="$port" "$image" \
  serve --host 127.0.0.1 --port "$port" >/dev/null
trap 'podman rm -f "$name" >/dev/null 2>&1 || true' EXIT
url="http://127.0.0.1:$port"
for _ in $(seq 60); do curl -sf "$url/api/ready" >/dev/null && break; sleep 1; done
curl -sf "$url/api/ready" | grep -q '"ready"' || { podman logs "$name"; echo "FAIL: not ready"; exit 1; }
echo "ok: ready"
code=$(curl -s -o /dev/null -w '%{http_code}' -F "file=@$image_file" "$url/api/analyze?images=none")
[ "$code" = 401 ] || { echo "FAIL: without a token: $code, not 401"; exit 1; }
echo "ok: 401 without a token"
label=$(curl -sf -H "Authorization: Bearer $token" -F "file=@$image_file" \
  "$url/api/analyze?images=none" | python3 -c 'import json,sys; print(json.load(sys.stdin)["label"])')
echo "ok: analysed with the token: $label"
curl -sf -H "Authorization: Bearer $token" "$url/metrics" | grep -q "busdx_analyses_total{call=\"$label\"} 1.0" \
  || { echo "FAIL: the analysis is not in /metrics"; exit 1; }
echo "ok: /metrics counts it"
podman healthcheck run "$name" >/dev/null || { echo "FAIL: the health check"; exit 1; }
echo "ok: the image's health check"
podman logs "$name" 2>&1 | grep -q '"client": "smoke"' || { echo "FAIL: no audit line"; exit 1; }
echo "ok: audit line for client smoke"
podman exec "$name" python3 -c "import importlib.util as u; assert u.find_spec('torch') is None" \
  && echo "ok: no torch in the image"
echo "smoke test passed"
