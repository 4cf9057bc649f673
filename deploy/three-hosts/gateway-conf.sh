#!/bin/sh
# deploy/nginx.conf on stdin, the three-host gateway's nginx.conf on stdout:
#   sh deploy/three-hosts/gateway-conf.sh < deploy/nginx.conf > /etc/nginx/nginx.conf
# Three changes, nothing else:
# - its upstream block (compose's api service) becomes `include nginx-upstreams.conf;`, the three
#   api processes, installed beside nginx.conf (relative includes are read from its directory);
# - the access log goes to /var/log/nginx/chatd-access.log instead of /dev/stdout, and the error
#   log to "stderr" (nginx's own keyword: the descriptor it was started with, the journal) instead
#   of /dev/stderr. Under systemd (Debian's nginx.service) both descriptors are sockets to the
#   journal, which nginx cannot open by name (open() fails with ENXIO: nginx refuses to start),
#   and a daemonized nginx points its standard output at /dev/null, so a reload would reopen
#   /dev/stdout there. Debian's logrotate rotates /var/log/nginx/*.log and has nginx reopen them.
# If deploy/nginx.conf no longer has exactly one such upstream block and access log, it writes
# nothing and fails.
set -eu
awk '
    BEGIN { out = "# Written by deploy/three-hosts/gateway-conf.sh from deploy/nginx.conf: edit those, not this.\n" }
    function flush() { out = out comments; comments = "" }
    skipping { if ($0 ~ /^[ \t]*}[ \t]*$/) skipping = 0; next }
    /^[ \t]*#/ { comments = comments $0 "\n"; next }
    /^[ \t]*upstream[ \t]+chatd_api[ \t]*\{[ \t]*$/ {
        # The block and the comment above it (about compose) give way to the include.
        comments = ""; skipping = 1; upstreams++
        indent = $0; sub(/[^ \t].*$/, "", indent)
        out = out indent "# The three api processes: deploy/three-hosts/nginx-upstreams.conf.\n"
        out = out indent "include nginx-upstreams.conf;\n"
        next
    }
    /^[ \t]*access_log[ \t]+\/dev\/stdout[ \t;]/ {
        sub(/\/dev\/stdout/, "/var/log/nginx/chatd-access.log"); access++
    }
    /^[ \t]*error_log[ \t]+\/dev\/stderr[ \t;]/ { sub(/\/dev\/stderr/, "stderr"); errors++ }
    /\/dev\/std(out|err)/ { left++ }
    { flush(); out = out $0 "\n" }
    END {
        flush()
        if (upstreams != 1 || skipping || access != 1 || errors < 1 || left) {
            printf "gateway-conf.sh: expected one upstream chatd_api block, one access_log /dev/stdout and error_log /dev/stderr only (found %d, %d, %d, %d other /dev/std* lines)\n", upstreams, access, errors, left > "/dev/stderr"
            exit 1
        }
        printf "%s", out
    }
'
