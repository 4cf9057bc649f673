#!/usr/bin/env bash
# The reference design's "Testing the System" script, against the chatd at $1.
# One change: instead of a fixed `sleep 5`, it polls search until the message is indexed.
set -euo pipefail
BASE=${1:-http://localhost:8080}

# 1. Create application
TOKEN=$(curl -s -X POST $BASE/applications \
  -H "Content-Type: application/json" \
  -d '{"application": {"name": "Test App"}}' | jq -r '.token')

echo "Application Token: $TOKEN"

# 2. Create chat
CHAT=$(curl -s -X POST $BASE/applications/$TOKEN/chats | jq -r '.number')
echo "Chat Number: $CHAT"

# 3. Create message
MSG=$(curl -s -X POST $BASE/applications/$TOKEN/chats/$CHAT/messages \
  -H "Content-Type: application/json" \
  -d '{"content": "Hello from the test!"}' | jq -r '.number')

echo "Message Number: $MSG"

# 4. Wait for indexing (at most 30 seconds)
for _ in $(seq 300); do
  total=$(curl -s "$BASE/applications/$TOKEN/chats/$CHAT/messages/search?query=hello" | jq -r '.total')
  [ "$total" = "1" ] && break
  sleep 0.1
done

# 5. Search
curl -s "$BASE/applications/$TOKEN/chats/$CHAT/messages/search?query=hello" | jq
