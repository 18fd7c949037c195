#!/bin/sh
# As the official image: a redis-server command listens on every interface, unprotected.
set -eu
if [ "$1" = redis-server ]; then
  shift
  exec setpriv --reuid=redis --regid=redis --init-groups redis-server --bind 0.0.0.0 \
    --protected-mode no --dir /var/lib/redis "$@"
fi
exec "$@"
