#!/usr/bin/env bash
# Certificates for port 3307 without cert-manager, in cert-manager's layout: writes
# OUT/tls.crt, OUT/tls.key and OUT/ca.crt, one certificate for the whole StatefulSet (every
# pod serves and clients with it), signed by the CA in CA_DIR (created there if missing).
#
#   scripts/make-certs.sh --ca ./ca --out ./tls mysql-{0..9}.mysql '*.mysql.default.svc.cluster.local'
# (rustls, like browsers, matches no wildcard right under a one-label name such as *.mysql:
# list the pods' short names, as many as the StatefulSet may have.)
#   kubectl create secret generic mysql-tls --from-file=./tls
#
# --days N sets the certificate's lifetime (default 397); 0 makes one that has already
# expired (the tests use it). The tests use this script too.
set -euo pipefail

ca_dir= out= days=397 names=()
while (($#)); do
    case $1 in
        --ca) ca_dir=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        --days) days=$2; shift 2 ;;
        -*) echo "make-certs: unknown option $1" >&2; exit 2 ;;
        *) names+=("$1"); shift ;;
    esac
done
if [[ -z $ca_dir || -z $out || ${#names[@]} -eq 0 ]]; then
    echo "usage: make-certs.sh --ca CA_DIR --out OUT_DIR [--days N] DNS_NAME..." >&2
    exit 2
fi
command -v openssl >/dev/null || { echo "make-certs: openssl not found" >&2; exit 1; }

mkdir -p "$ca_dir" "$out"
umask 077
if [[ ! -f $ca_dir/ca.key ]]; then
    openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -keyout "$ca_dir/ca.key" -out "$ca_dir/ca.crt" -subj "/CN=mysql-agent CA" -days 3650 \
        -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
fi
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
san=$(printf 'DNS:%s,' "${names[@]}")
printf 'subjectAltName=%s\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=critical,CA:FALSE\n' "${san%,}" >"$work/ext"
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout "$work/tls.key" \
    -out "$work/tls.csr" -subj "/CN=${names[0]}" 2>/dev/null
openssl x509 -req -in "$work/tls.csr" -CA "$ca_dir/ca.crt" -CAkey "$ca_dir/ca.key" \
    -CAcreateserial -out "$work/tls.crt" -days "$days" -extfile "$work/ext" 2>/dev/null
# Replaced, not rewritten in place, as a Secret volume swaps its files.
cp "$ca_dir/ca.crt" "$work/ca.crt"
for f in tls.key tls.crt ca.crt; do mv -f "$work/$f" "$out/$f.new" && mv -f "$out/$f.new" "$out/$f"; done
chmod 0644 "$out/tls.crt" "$out/ca.crt"
