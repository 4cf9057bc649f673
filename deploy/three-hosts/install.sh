#!/bin/sh
# Installs this directory's files on one host, as root, from a checkout of the repository:
#   sh deploy/three-hosts/install.sh chat1   # chatd's units and drop-ins, /etc/chatd/chatd.env (chat2, chat3 alike)
#   sh deploy/three-hosts/install.sh gateway # /etc/nginx/nginx.conf and nginx-upstreams.conf
# then as README.md says: fill in the CHANGE_ME_* of /etc/chatd/chatd.env, daemon-reload, start.
# DESTDIR=/some/dir installs under that directory instead of / (the tests do). chatd itself goes
# to /opt/chatd and its migrations to /opt/chatd/sql, as deploy/systemd/chatd-api.service says.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
deploy=$(dirname "$here")
root=${DESTDIR:-}
systemd=$root/etc/systemd/system

case ${1:-} in
chat1 | chat2 | chat3)
    host=$1
    units="chatd-api.service chatd-worker.service"
    if [ "$host" = chat1 ]; then
        # Migrations and backups run once, against the primary, from chat1 only. On chat2 and
        # chat3 the api and worker units still name chatd-migrate.service in Wants= and After=;
        # a unit that is not installed is left out, and they start without it.
        units="$units chatd-migrate.service chatd-backup.service chatd-backup.timer"
    fi
    install -d -m 0755 "$systemd"
    for unit in $units; do
        install -m 0644 "$deploy/systemd/$unit" "$systemd/$unit"
    done
    for dir in "$here/chatd-.service.d" "$here/$host"/*.service.d; do
        install -d -m 0755 "$systemd/${dir##*/}"
        install -m 0644 "$dir"/*.conf "$systemd/${dir##*/}/"
    done
    install -d -m 0700 "$root/etc/chatd"
    if [ -e "$root/etc/chatd/chatd.env" ]; then
        # It holds this host's passwords: never overwritten. Compare the two and merge by hand.
        install -m 0600 "$here/$host/chatd.env" "$root/etc/chatd/chatd.env.new"
        echo "install.sh: kept /etc/chatd/chatd.env; this checkout's is /etc/chatd/chatd.env.new" >&2
    else
        install -m 0600 "$here/$host/chatd.env" "$root/etc/chatd/chatd.env"
    fi
    ;;
gateway)
    install -d -m 0755 "$root/etc/nginx"
    if ! sh "$here/gateway-conf.sh" <"$deploy/nginx.conf" >"$root/etc/nginx/nginx.conf.new"; then
        rm -f "$root/etc/nginx/nginx.conf.new"
        exit 1
    fi
    install -m 0644 "$here/nginx-upstreams.conf" "$root/etc/nginx/nginx-upstreams.conf"
    chmod 0644 "$root/etc/nginx/nginx.conf.new"
    mv "$root/etc/nginx/nginx.conf.new" "$root/etc/nginx/nginx.conf"
    ;;
*)
    echo "usage: $0 chat1|chat2|chat3|gateway" >&2
    exit 2
    ;;
esac
