#!/usr/bin/env bash
# Prints one Kubernetes Secret per party holding what its node needs from an enrolled trust
# directory (`mcloud authority local --dir DIR ...`, or a party's own enrolment): its voter's
# and cloud's credentials and every party's CA. Keys are the file paths with '/' as '.'.
#   deploy/k8s/credentials.sh DIR | kubectl apply -f -
set -euo pipefail
dir=${1:?usage: credentials.sh TRUST_DIR}
for p in 0 1 2; do
  echo "---"
  echo "apiVersion: v1"
  echo "kind: Secret"
  echo "metadata:"
  echo "  name: mcloud-party$p-credentials"
  echo "type: Opaque"
  echo "data:"
  for role in "voter$p" "cloud$p"; do
    for f in ca.pem cert.pem key.pem node.toml parties/party0.pem parties/party1.pem parties/party2.pem; do
      echo "  $role.${f//\//.}: $(base64 -w0 < "$dir/$role/$f")"
    done
  done
  for q in 0 1 2; do
    echo "  party$q.pem: $(base64 -w0 < "$dir/party$q.pem")"
  done
done
