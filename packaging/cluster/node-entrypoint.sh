#!/bin/sh
# Writes this node's config (node.toml with its PORTCULLIS_NODE number),
# checks it, and runs the node.
set -eu
: "${PORTCULLIS_NODE:?set PORTCULLIS_NODE to this node's number}"
sed "s/^node_id = NODE_ID$/node_id = ${PORTCULLIS_NODE}/" /etc/portcullis/node.toml > /var/lib/portcullis/portcullis.toml
/usr/bin/portcullis check-config --config /var/lib/portcullis/portcullis.toml
exec /usr/bin/portcullis serve --config /var/lib/portcullis/portcullis.toml
