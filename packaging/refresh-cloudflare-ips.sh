#!/usr/bin/env bash
# Refresh Cloudflare's address ranges in bundled_nginx/cloudflare.conf.template from the
# lists Cloudflare publishes; review the diff, commit, rebuild. Needs curl and the internet.
set -euo pipefail
cd "$(dirname "$0")/.."
file=bundled_nginx/cloudflare.conf.template
ranges=$(curl -fsS https://www.cloudflare.com/ips-v4; echo; curl -fsS https://www.cloudflare.com/ips-v6)
lines=$(printf '%s\n' "$ranges" | grep -E '^[0-9a-f:.]+/[0-9]+$' | sed 's/^/    set_real_ip_from /; s/$/;/')
[ -n "$lines" ] || { echo "Error: no ranges fetched from www.cloudflare.com" >&2; exit 1; }
{
  sed -n '1,/# ranges-begin/p' "$file" | sed '$d'
  echo "    # ranges-begin (as published on $(date -u +%Y-%m-%d))"
  printf '%s\n' "$lines"
  sed -n '/# ranges-end/,$p' "$file"
} > "$file.new"
mv "$file.new" "$file"
git --no-pager diff --stat -- "$file" 2>/dev/null || true
